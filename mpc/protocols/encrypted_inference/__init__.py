"""Two-party inference of ``mpc-cnn``: its driver (``coordinator``), steps (``steps``, ``wire``)."""
