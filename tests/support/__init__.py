"""Helpers shared by the tests: jobs, PKI, fault tooling, HTTP/2 factories, Redis topologies, supervisord,
in-process daemons, Dockerfile parsing and the docs examples."""
