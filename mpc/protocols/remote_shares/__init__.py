"""Shared tensors that live on workers (PySyft 0.2's ``.share(alice, bob, crypto_provider=...)``).

``coordinator`` has the handles and the driver (:func:`share`, :class:`ShareGroup`,
:class:`RemoteShared`); ``steps`` what each party, owner and the provider runs.
"""

from mpc.protocols.remote_shares.coordinator import COORDINATOR, RemoteShared, ShareGroup, share

__all__ = ["COORDINATOR", "RemoteShared", "ShareGroup", "share"]
