"""Shared tensors with SPDZ MACs on workers: :class:`AuthenticatedGroup` (see ``coordinator``)."""

from mpc.protocols.authenticated_shares.coordinator import AuthenticatedGroup
from mpc.protocols.authenticated_shares.tensor import MAX_SCALE, AuthenticatedShared

__all__ = ["MAX_SCALE", "AuthenticatedGroup", "AuthenticatedShared"]
