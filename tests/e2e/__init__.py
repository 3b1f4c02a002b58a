"""End-to-end tests: a real redis-server, real TLS, the mock gateways and real processes."""
