"""The Redis side: the job queue adapter, its key layout and Lua scripts — the only Redis user.

Imports `apnsd.config` and `apnsd.errors`; knows nothing of gateways or sessions.
"""
