"""Values in, values out: jobs and their validation, outcome tables, retry and backoff policy.

Owns what a job is and what an answer means. Imports only `apnsd.errors` and the standard
library (plus msgspec): no sockets, Redis, clocks, metrics or logging.
"""
