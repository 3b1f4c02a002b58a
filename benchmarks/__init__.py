"""apnsd benchmarks: `python -m benchmarks.run --help`. Not tests: nothing here runs under pytest."""
