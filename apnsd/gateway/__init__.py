"""The gateway side: TLS transport, per-connection sessions for both protocols, credentials,
certificate inspection and the feedback poller.

The only home of pyOpenSSL connections. Imports `apnsd.core`, `apnsd.wire`, `apnsd.config`,
`apnsd.errors`, `apnsd.logs` and `apnsd.metrics`; never Redis or the worker.
"""
