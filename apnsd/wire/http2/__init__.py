"""The purpose-built HTTP/2 client core: frames, HPACK encoding, the `:status` reader, events, connection state.

Imports `apnsd.errors` only; `h2`/`hpack` are test references, not dependencies of this package.
"""
