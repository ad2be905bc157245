"""Shared tensors that live on workers (PySyft 0.2's ``.share(alice, bob, crypto_provider=...)``).

The coordinator's side: ``coordinator`` (:class:`ShareGroup`: the session, its
parties, sharing and opening; :func:`share`), ``operations`` (the group's
requests, local steps and products), ``dealing`` (the provider's tuples, dealt
ahead or for a traced computation) and ``tensor`` (the :class:`RemoteShared`
handle). The workers' side: ``vault`` (what a party keeps,
the audience rule), ``steps``, ``dealt_steps`` and ``held_steps``.
"""

from mpc.protocols.remote_shares.coordinator import ShareGroup, share
from mpc.protocols.remote_shares.tensor import RemoteShared
from mpc.protocols.remote_shares.vault import COORDINATOR

__all__ = ["COORDINATOR", "RemoteShared", "ShareGroup", "share"]
