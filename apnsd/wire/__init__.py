"""Sans-IO wire protocols: the legacy binary frames and the HTTP/2 client (bytes in, events out).

Imports `apnsd.errors` and `apnsd.core` only; never a socket, thread, clock or logger.
"""
