"""Shared tensors with SPDZ MACs: a party that cheats is caught before a value is returned.

Alice and Bob hold (share, MAC share) pairs under a key only Charlie, the
provider, knows whole. The coordinator — this script — computes
``(x @ w + b).square()`` on them and opens it after the MAC check. Then Bob
cheats: he adds 1 to his share of the next value opened; the check fails and
nothing is returned.

    .venv/bin/python examples/authenticated_shares.py
"""

from __future__ import annotations

import torch

from mpc.errors import MPCError
from mpc.field import field_add
from mpc.protocols.authenticated_shares import AuthenticatedGroup
from mpc.protocols.authenticated_shares.steps import OPEN
from workers.codec import Value
from workers.virtual import VirtualWorker


class CheatingWorker(VirtualWorker):
    """Bob, once he decides to cheat: one unit more on his share of an opened value."""

    cheating = False

    def party_op(self, op: str, **args: Value) -> dict[str, Value]:
        reply = super().party_op(op, **args)
        if op == OPEN and self.cheating:
            share = reply["share"]
            assert isinstance(share, torch.Tensor)
            reply["share"] = field_add(share, torch.ones_like(share))
        return reply


def main() -> None:
    alice, bob, charlie = VirtualWorker("alice"), CheatingWorker("bob"), VirtualWorker("charlie")
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(4, 3, generator=gen), torch.randn(3, 2, generator=gen), torch.randn(2)

    with AuthenticatedGroup([alice, bob], charlie, fractional_bits=12) as group:
        y = (group.share(x) @ group.share(w) + b).square()  # 48 fractional bits, MAC'd
        expected = (x.double() @ w.double() + b.double()) ** 2
        print("checked result, max error:", float((y.get() - expected).abs().max()))
        bob.cheating = True
        try:
            y.get()
        except MPCError as caught:
            print("bob cheated:", caught)


if __name__ == "__main__":
    main()
