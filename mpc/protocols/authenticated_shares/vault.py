"""What a party of an authenticated share group keeps, and the field arithmetic on it.

An authenticated group is a share group (``remote_shares``) whose tensors carry
SPDZ MACs: each party holds, for tensor ``id``, a share x_i of the value and a
share m_i of its MAC α·x, in F_p (p = 2^61 − 1; ``mpc.field`` says why not
Z/2^64), with the MAC key α additively shared among the parties and known to
the provider alone. Vault keys under ``<session>/``, besides ``key`` and
``group`` (as a share group's): ``mac_key`` (α_i), ``a/<id>`` (share, MAC share),
``pending_auth/<id>`` (a product's tuple between its mask and finish steps),
``log`` (the opened values not yet checked, with this party's MAC shares of
them: :class:`OpenedLog`), ``used`` (dealt serials, as a share group's);
provider: ``alpha`` (α) and ``serial``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpc.errors import MPCError
from mpc.field import (
    P,
    check_field,
    field_matmul,
    field_mul,
    field_mul_scalar,
    field_sub,
    field_sum,
)
from workers.codec import Value
from workers.party import Party, PartyError, check_tensor

__all__ = [
    "FIELD_KINDS",
    "MAX_LOGGED",
    "OpenedLog",
    "field_arg",
    "field_op",
    "mac_key",
    "read_pair",
    "store_pair",
]

FIELD_KINDS = ("mul", "matmul", "square")  # products with dealt authenticated tuples
MAX_LOGGED = 1 << 27  # opened elements a party keeps unchecked before it refuses more


def field_op(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The bilinear map of ``kind`` in F_p."""
    if kind == "matmul":
        return field_matmul(a, b)
    return field_mul(a, b)


def field_arg(value: Value, name: str, shape: Sequence[int] | None = None) -> torch.Tensor:
    """A tensor of field elements from a request (values in [0, p), the shape if given)."""
    tensor = check_tensor(value, name, dtype=torch.int64)
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise PartyError(f"{name!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
    try:
        check_field(tensor, name)
    except MPCError as exc:
        raise PartyError(str(exc)) from None
    return tensor


def mac_key(party: Party, session: str) -> int:
    """α_i, this party's share of the MAC key (refused if the session has none)."""
    if not party.has(f"{session}/mac_key"):
        raise PartyError(f"session {session!r} is not an authenticated group of this party")
    key: int = party.secret(f"{session}/mac_key")
    return key


def read_pair(party: Party, session: str, tensor_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(share, MAC share) of tensor ``tensor_id``."""
    pair: tuple[torch.Tensor, torch.Tensor] = party.secret(f"{session}/a/{tensor_id}")
    return pair


def store_pair(
    party: Party, session: str, tensor_id: str, share: torch.Tensor, mac: torch.Tensor
) -> None:
    key = f"{session}/a/{tensor_id}"
    if party.has(key):
        raise PartyError(f"tensor {tensor_id!r} exists already in session {session!r}")
    party.keep(key, (share, mac))


class OpenedLog:
    """Opened values this party has not yet had checked, with its MAC shares of them.

    SPDZ checks openings in batches: a party records each opened value y (as the
    coordinator sent it) beside its share of α·y, and at the check answers
    σ_i = Σ_k ρ_k·(m_i,k − α_i·y_k) for coefficients ρ drawn after the openings.
    """

    def __init__(self) -> None:
        self.entries: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.elements = 0

    def add(self, opened: torch.Tensor, mac: torch.Tensor) -> None:
        if self.elements + opened.numel() > MAX_LOGGED:
            raise PartyError(f"more than {MAX_LOGGED} opened elements unchecked: check first")
        self.entries.append((opened, mac))
        self.elements += opened.numel()

    def sigma(self, alpha_share: int, coefficients: Sequence[torch.Tensor]) -> int:
        """σ_i over every entry, then forget them (checked or failed, they are done)."""
        total = 0
        for (opened, mac), rho in zip(self.entries, coefficients, strict=True):
            errors = field_sub(mac, field_mul_scalar(opened, alpha_share))
            total = (total + int(field_sum(field_mul(rho, errors.reshape(-1))))) % P
        self.entries.clear()
        self.elements = 0
        return total
