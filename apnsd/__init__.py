"""apnsd: Apple push notifications from a Redis list over one persistent TLS connection."""

__version__ = "0.1.0"
