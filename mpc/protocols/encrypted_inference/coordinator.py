"""Encrypted evaluation: the model owner's CNN on the data owner's test images, under MPC.

Roles: data owner P0 (holds the images and labels, learns the predictions),
model owner P1 (holds the trained ``mpc-cnn`` weights), dealer D (supplies
correlated randomness, sees no data). Arithmetic is in Z/2^64 with f = 16
fractional bits and two-party local truncation (SecureML, Mohassel & Zhang,
S&P 2017) after every product. Pure ring math: ``mpc.inference_layers``; the
party steps: ``mpc.protocols.encrypted_inference.steps``.

Sharing. The weights are shared as W = f + b: the dealer draws a mask b per
layer (P1 gets its seed), P1 opens f = W − b to P0 **once**, and every batch
reuses it — the model's masked weights opened once and reused for every
batch. An image batch x is shared as x = a + e: the dealer draws a fresh
input mask a per batch (P0 gets its seed) and P0 sends e = x − a to P1.

Linear layer (conv or fc), per batch, with c = op(a, b) dealt as c0 (P0's
seed) + c1 (sent to P1) and P1 holding the plain W and a share x1 of the input
(x1 = 0 for the first layer, x0 = x)::

    P0 → P1:  e = x0 − a                  (input-sized, masked by fresh a)
    P0:       z0 = op(a, f) + c0          (data-independent: computed offline)
    P1:       z1 = op(x1 + e, W) + c1 + bias·2^f
    z0 + z1 = op(a, W − b) + op(a, b) + op(x − a, W) + bias = op(x, W) + bias

Deviation from the textbook Beaver product on shared x and shared W (four
online ring convolutions, two openings): P1 keeps W in the clear — its own
model — so the product is one online convolution on P1 and one offline on P0,
plus the dealer's c; e travels one way. This is Beaver's protocol with P1's
weight share taken as W itself; reusing b for every batch is sound because f
is opened once (W never changes) and every batch has a fresh a, c0 and c1.

Activation a·y² + b·y + c (0.125, 0.5, 0.25) on y = trunc(z): a Beaver square
pair s = s0 + s1, t = s² = t0 + t1 from the dealer; open d = y − s; then
y² = t + 2·d·s + d² (P0 adds d²), truncated; the rest is public scaling. P0's
share y0 of every linear output is data-independent, so P0 computes
d0 = y0 − s0 offline and only P1's d1 = y1 − s1 is sent online. Average
pooling is a local sum and one shift. Output: P1 seals its share of the
logits for P0, which opens them, takes the argmax and compares its labels.

Online messages per batch: e (input-sized) for each of the 4 layers, d1
(output-sized) for each of the 3 activations, P1's sealed logits. Online
computation: one ring convolution/matmul per layer on P1, elementwise work on both.

Security (semi-honest, dealer colluding with nobody). The coordinator relays
everything; the dealer's seeds and corrections and P1's logits share travel
sealed (``mpc.channel``), so it sees only f = W − b, e = x0 − a, d0 = y0 − s0
and d1 = y1 − s1, each masked by dealer randomness it never sees — uniformly
random. P1 sees e, d0 (masked by a, s0 it does not know); P0 sees f, d1
(masked by b, s1). Every per-batch mask is used once: the party steps drop
each item as they consume it and refuse a replayed or out-of-order step.

Truncation failures. Local truncation of a ring value v fails (an error of
2^(64−f) units) with probability ≤ |v| / 2^63. The protocol truncates every
linear output and, per activation, y² and the (pooled) polynomial, all at
scale 2f; :func:`mpc.inference_layers.reference_forward` sums the bound over a
model's actual activations. For the benchmark model (``benchmarks/encrypted_eval.py``
prints it) on the 10,000 Fashion-MNIST test images the bound is ≈ 0.3 failing
elements in expectation over ~4·10⁸ truncations; each could flip at most one
prediction, i.e. ≤ 0.003 points expected against the 0.5-point budget.

Batch size. The largest messages are the dealer's corrections for P1 and P1's
prepare request (≈ 0.45 MB per image in the batch): over websocket workers
(256 MiB frame limit by default) keep ``batch_size`` ≤ 550. The default 250
also keeps every tensor under glibc's 32 MiB mmap ceiling, so a process that
raises M_MMAP_THRESHOLD (``benchmarks/encrypted_eval.py`` does) reuses heap
memory instead of faulting fresh pages in for every tensor.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from mpc.errors import MPCError
from mpc.inference_layers import MPC_CNN
from mpc.protocols.base import Protocol, ProtocolRun, Step
from mpc.protocols.encrypted_inference import steps as party
from mpc.protocols.sessions import exchange_keys
from mpc.ring import DEFAULT_FRACTIONAL_BITS
from workers.base import Worker
from workers.codec import Value

__all__ = ["ENCRYPTED_INFERENCE", "EncryptedEvalResult", "encrypted_evaluate"]

MODEL = "mpc-cnn"
_OFFLINE = ("deal", "prepare_data", "prepare_model")
_ONLINE = ("input", "linear", "activate", "output")


@dataclass(frozen=True)
class EncryptedEvalResult:
    """What the data owner reported, and what the run cost.

    ``seconds`` is wall time (setup included); ``offline_seconds`` is the
    dealer's and the parties' data-independent work, ``online_seconds`` the
    rest; with ``parallel`` the dealer works ahead, so they may overlap.
    ``bytes_moved`` counts every frame between the coordinator and the three workers.
    """

    predictions: torch.Tensor
    correct: int
    num_images: int
    seconds: float
    setup_seconds: float
    offline_seconds: float
    online_seconds: float
    bytes_moved: int
    step_seconds: dict[str, float]
    logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def accuracy(self) -> float:
        return self.correct / self.num_images


def _timed(run: ProtocolRun, name: str, worker: Worker, op: str, **args: Value) -> dict[str, Value]:
    start = time.perf_counter()
    reply = worker.party_op(op, session=run.session, model=MODEL, **args)
    timings: dict[str, float] = run.state["timings"]
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    return reply


def _peers(run: ProtocolRun, *roles: str) -> dict[str, Value]:
    """The ``<role>`` (worker id) and ``<role>_key`` (public key) arguments for sealing."""
    args: dict[str, Value] = {}
    for role in roles:
        args[role] = run.one(role).id
        args[f"{role}_key"] = run.public_key(run.one(role))
    return args


def _setup(run: ProtocolRun) -> None:
    """D deals the weight masks b; P1 opens f = W − b to P0 (once for the whole run)."""
    dealer, p0, p1 = run.one("dealer"), run.one("data_owner"), run.one("model_owner")
    bits = run.state["fractional_bits"]
    reply = _timed(run, "setup", dealer, party.DEAL_WEIGHTS, **_peers(run, "model_owner"))
    reply = _timed(
        run,
        "setup",
        p1,
        party.SETUP_MODEL,
        state_id=run.state["state_id"],
        sealed=reply["sealed"],
        fractional_bits=bits,
        **_peers(run, "dealer"),
    )
    reply = _timed(
        run,
        "setup",
        p0,
        party.SETUP_DATA,
        masked_weights=reply["masked_weights"],
        images_id=run.state["images_id"],
        labels_id=run.state["labels_id"],
        fractional_bits=bits,
    )
    if reply["num_images"] != run.state["num_images"]:
        raise MPCError(
            f"the data owner holds {reply['num_images']} images, expected {run.state['num_images']}"
        )


def _deal(run: ProtocolRun, batch: int, count: int) -> dict[str, Value]:
    return _timed(
        run,
        "deal",
        run.one("dealer"),
        party.DEAL_BATCH,
        batch=batch,
        count=count,
        **_peers(run, "data_owner", "model_owner"),
    )


def _prepare(run: ProtocolRun, batch: int, start: int, count: int, dealt: dict[str, Value]) -> None:
    p0, p1 = run.one("data_owner"), run.one("model_owner")
    reply = _timed(
        run,
        "prepare_data",
        p0,
        party.PREPARE_DATA,
        batch=batch,
        start=start,
        count=count,
        sealed=dealt["to_data_owner"],
        **_peers(run, "dealer"),
    )
    _timed(
        run,
        "prepare_model",
        p1,
        party.PREPARE_MODEL,
        batch=batch,
        count=count,
        sealed=dealt["to_model_owner"],
        d0=reply["d0"],
        **_peers(run, "dealer"),
    )


def _online(run: ProtocolRun, batch: int) -> dict[str, Value]:
    """Relay e (P0 → P1) and d1 (P1 → P0) layer by layer; P0 opens the logits."""
    p0, p1 = run.one("data_owner"), run.one("model_owner")
    e = _timed(run, "input", p0, party.INPUT, batch=batch)["e"]
    last = len(MPC_CNN) - 1
    for index in range(last):
        d = _timed(run, "linear", p1, party.LINEAR, batch=batch, layer=index, e=e)["d"]
        e = _timed(run, "activate", p0, party.ACTIVATE, batch=batch, layer=index, d=d)["e"]
    reply = _timed(
        run, "linear", p1, party.LINEAR, batch=batch, layer=last, e=e, **_peers(run, "data_owner")
    )
    return _timed(
        run,
        "output",
        p0,
        party.OUTPUT,
        batch=batch,
        sealed=reply["sealed"],
        report_logits=run.state["report_logits"],
        **_peers(run, "model_owner"),
    )


def _batches(run: ProtocolRun) -> None:
    """Every batch: offline (deal, prepare) then online; with ``parallel`` the dealer
    deals batch k + 1 while batch k is evaluated (it takes no part in the online phase)."""
    n, size = run.state["num_images"], run.state["batch_size"]
    plan = [(k, start, min(size, n - start)) for k, start in enumerate(range(0, n, size))]
    replies: list[dict[str, Value]] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead: Future[dict[str, Value]] | None = None
        for position, (batch, start, count) in enumerate(plan):
            dealt = ahead.result() if ahead is not None else _deal(run, batch, count)
            ahead = None
            if run.parallel and position + 1 < len(plan):
                nxt = plan[position + 1]
                ahead = pool.submit(_deal, run, nxt[0], nxt[2])
            _prepare(run, batch, start, count, dealt)
            del dealt
            replies.append(_online(run, batch))
    run.state["replies"] = replies


ENCRYPTED_INFERENCE = Protocol(
    "encrypted-inference",
    roles=("data_owner", "model_owner", "dealer"),
    steps=(
        Step("keys", "dealer", exchange_keys),
        Step("setup", "model_owner", _setup),
        Step("batches", "data_owner", _batches),
    ),
)


def encrypted_evaluate(
    state: Mapping[str, torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    data_owner: Worker,
    model_owner: Worker,
    dealer: Worker,
    batch_size: int = 250,
    parallel: bool = False,
    fractional_bits: int = DEFAULT_FRACTIONAL_BITS,
    report_logits: bool = False,
) -> EncryptedEvalResult:
    """Evaluate the ``mpc-cnn`` ``state`` on ``images`` under MPC; only P0 sees the predictions.

    The coordinator plays both owners' clients here: it sends ``state`` to the
    model owner and ``images``/``labels`` to the data owner, then runs
    :data:`ENCRYPTED_INFERENCE`. ``parallel`` lets the dealer deal batch k + 1
    in a thread while batch k is evaluated (docs/mpc-and-he.md, "Encrypted evaluation").
    ``report_logits`` makes the data owner also return the opened logits (for tests;
    the flows never ask). The data owner returns the predictions to the caller.
    """
    if images.ndim != 4 or labels.shape != images.shape[:1] or images.shape[0] == 0:
        raise MPCError(f"need (N, 1, 28, 28) images and N labels, got {tuple(images.shape)}")
    if not 1 <= batch_size <= 4096:
        raise MPCError(f"batch size must be in [1, 4096], got {batch_size}")
    workers = (data_owner, model_owner, dealer)
    if len({w.id for w in workers}) != 3:
        raise MPCError("data owner, model owner and dealer must be three distinct workers")
    before = sum(w.bytes_sent + w.bytes_received for w in workers)
    start = time.perf_counter()
    state_ptr = model_owner.send({k: v.detach() for k, v in state.items()})
    images_ptr = data_owner.send(images.detach().to(torch.float32).contiguous())
    labels_ptr = data_owner.send(labels.detach().to(torch.int64).contiguous())
    run = ENCRYPTED_INFERENCE.bind(
        {"data_owner": [data_owner], "model_owner": [model_owner], "dealer": [dealer]},
        parallel=parallel,
    )
    run.state.update(
        state_id=state_ptr.id,
        images_id=images_ptr.id,
        labels_id=labels_ptr.id,
        num_images=int(images.shape[0]),
        batch_size=batch_size,
        fractional_bits=fractional_bits,
        report_logits=report_logits,
        timings={"send": time.perf_counter() - start},
    )
    try:
        run.run()
    finally:
        for ptr in (state_ptr, images_ptr, labels_ptr):
            ptr.delete()
    seconds = time.perf_counter() - start
    replies: list[dict[str, Value]] = run.state["replies"]
    predictions = torch.cat([r["predictions"] for r in replies])
    logits = torch.cat([r["logits"] for r in replies]) if report_logits else None
    timings: dict[str, float] = run.state["timings"]
    steps = {**{f"protocol.{k}": v for k, v in run.seconds.items()}, **timings}
    return EncryptedEvalResult(
        predictions=predictions,
        correct=sum(int(r["correct"]) for r in replies),
        num_images=int(images.shape[0]),
        seconds=seconds,
        setup_seconds=timings.get("send", 0.0)
        + run.seconds.get("keys", 0.0)
        + timings.get("setup", 0.0),
        offline_seconds=sum(timings.get(k, 0.0) for k in _OFFLINE),
        online_seconds=sum(timings.get(k, 0.0) for k in _ONLINE),
        bytes_moved=sum(w.bytes_sent + w.bytes_received for w in workers) - before,
        step_seconds=steps,
        logits=logits,
    )
