"""Secure aggregation by additive sharing: its driver (``coordinator``) and steps (``steps``)."""
