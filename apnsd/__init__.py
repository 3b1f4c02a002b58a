"""apnsd: Apple push notifications from a Redis list over one persistent TLS connection.

Packages by layer, each importing only from lower ones (tests/unit/test_layers.py checks it):
errors → core, wire → config, logs, metrics, proxy → gateway, store → worker, client → cli, testing.
"""

__version__ = "0.1.0"
