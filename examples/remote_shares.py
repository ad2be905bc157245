"""Shared tensors on workers, as PySyft 0.2's ``.share(alice, bob, crypto_provider=charlie)``.

Alice and Bob hold the shares, Charlie deals the Beaver triples (sealed for each
of them), and the coordinator — this script — sees neither. A data owner, Dana,
shares her own features without them passing through the coordinator; the
result is opened to her alone, and a value the coordinator owns to it.

    .venv/bin/python examples/remote_shares.py
"""

from __future__ import annotations

import torch

from mpc.protocols.remote_shares import COORDINATOR, share
from workers.virtual import VirtualWorker


def main() -> None:
    alice, bob, charlie, dana = (VirtualWorker(n) for n in ("alice", "bob", "charlie", "dana"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=gen)  # the coordinator's own data
    weights, bias = torch.randn(3, 2, generator=gen), torch.randn(2, generator=gen)

    # Fixed point inside; each party gets one additive share.
    sx = share(x, parties=[alice, bob], provider=charlie)
    # Who may see results computed from a value opened is its sharer's call:
    # the coordinator lets Dana see what its weights compute on her data.
    sw = share(weights, parties=[alice, bob], provider=charlie, audience=[COORDINATOR, dana])
    y = (sx @ sw + bias).square()  # stays shared: nothing is opened
    expected = (x.double() @ weights.double() + bias.double()) ** 2
    print("coordinator's result, max error:", float((y.get() - expected).abs().max()))

    # Dana shares features she holds: she splits them and seals each share.
    features = dana.send(torch.randn(4, 3, generator=gen))
    sf = share(features, parties=[alice, bob], provider=charlie, audience=[dana])
    scores = sf @ sw + bias
    held = scores.reveal_to(dana)  # every party seals its share for Dana
    print("opened to dana as", repr(held), "- the coordinator may not read it")
    try:
        scores.get()
    except Exception as refused:  # the parties refuse: the coordinator is not in the audience
        print("coordinator asked for dana's scores:", refused)
    sx.group.close()  # every worker forgets the session


if __name__ == "__main__":
    main()
