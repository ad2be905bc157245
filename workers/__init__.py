"""Transport layer: sans-I/O message protocol, the worker core, and the
client-side Worker interface with its virtual implementation, pointers and
plans."""
