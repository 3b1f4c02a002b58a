"""Fast unit tests: no sockets, no Redis, no processes; milliseconds each."""
