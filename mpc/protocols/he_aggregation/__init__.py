"""CKKS aggregation with a key holder: the driver (``coordinator``), the party steps (``steps``)."""
