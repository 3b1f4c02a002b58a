"""The worker: the daemon process, one delivery loop per queue with its feeder, and outcome recording.

Ties the store to the gateway. May import everything below it (core, wire, gateway, store,
config, logs, metrics); nothing below imports it.
"""
