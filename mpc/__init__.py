"""Pure MPC library: ring Z/2^64 and fixed-point encoding (``ring``), a CSPRNG for
shares (``random``), additive secret sharing (``sharing``), the crypto provider
with Beaver triples (``provider``), Beaver multiplication and n-party truncation
(``beaver``), fixed-point shared tensors (``shared``). Protocols over workers,
secure aggregation and MACs come with issue 4. Imports neither Prefect, asyncio,
websockets nor MLflow."""
