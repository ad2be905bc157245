"""Multi-party protocols over workers, each with both of its roles in one place.

A protocol package holds the coordinator's driver (``coordinator.py``: a
:class:`~mpc.protocols.base.Protocol`, its steps and the function a flow
calls) and the parties' steps (``steps.py``: what runs on each worker, and
the wire names the driver sends). Steps register themselves with the
worker's registry (``workers.party``) when imported; a worker process
imports them all (:mod:`mpc.protocols.all_steps`).

- ``secure_aggregation``: additive secret sharing among a committee;
- ``secure_aggregation_mac``: the same with SPDZ MACs and a dealer;
- ``he_aggregation``: CKKS aggregation with a key holder;
- ``remote_shares``: shared tensors that live on workers (PySyft's ``.share``);
- ``encrypted_inference``: ``mpc-cnn`` on a data owner's images with a model
  owner's weights, on remote shares;
- ``sessions``: key exchange and sealing, used by all of them;
- ``release``: abandoning a session after a dropout, used by the aggregations.
"""
