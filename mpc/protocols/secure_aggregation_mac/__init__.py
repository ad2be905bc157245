"""Secure aggregation with SPDZ MACs: the driver (``coordinator``), the party steps (``steps``)."""
