"""The `apnsd` command line: one module per verb group; the top layer, imported by nothing."""
