"""Secret-shared computation for fedsim.

Pure arithmetic: the ring Z/2^64 and fixed-point encoding (``ring``), a CSPRNG
for shares (``random``), additive secret sharing (``sharing``), the crypto
provider with Beaver triples (``provider``), Beaver multiplication and n-party
truncation (``beaver``), fixed-point shared tensors (``shared``), CKKS (``he``), the prime
field F_p with p = 2^61 − 1 (``field``) and SPDZ MACs over it (``mac``), and
the pairwise X25519 + ChaCha20-Poly1305 channel (``channel``).

Protocols over workers live in ``mpc.protocols``, one package each with both
roles (the coordinator's driver and the parties' steps). They drive workers
only through the ``workers.base.Worker`` interface, so they run unchanged on
virtual and websocket workers. Nothing here imports Prefect, asyncio,
websockets or MLflow (``tests/test_layers.py``).
"""
