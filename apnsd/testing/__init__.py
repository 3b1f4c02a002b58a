"""Test and demo tooling, kept apart from the product: mock gateways, their record, a dev PKI, a throwaway redis-server.

Used by `apnsd mock`, `apnsd demo`, the tests and the benchmarks; the daemon never imports it.
"""
