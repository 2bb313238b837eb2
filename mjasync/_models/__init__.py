"""Pure layer: msgspec Structs for requests, results and task records; no I/O."""
