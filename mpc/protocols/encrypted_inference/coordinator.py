"""Encrypted evaluation: a model owner's ``mpc-cnn`` on a data owner's test images.

Built on shared tensors that live on workers (``mpc.protocols.remote_shares``),
with each role a worker of its own:

- the **data owner** holds its test images and labels as its own data; it
  shares the images *held* (it keeps them whole, the model owner keeps zero);
- the **model owner** holds the trained weights and shares them held, with
  the data owner in their audience — so results computed from both may be
  opened to the data owner, and to no one else;
- the **dealer** (the group's provider) deals every tuple sealed for each
  party and sees only its own randomness;
- the **coordinator** drives the layers and relays ciphertext and masked
  values. Each batch's logits are revealed to the data owner alone, which
  answers with the number it classified correctly: that count is all the
  coordinator learns.

The network, per batch: conv 5×5 (held weights: one ring convolution online,
``remote_shares.held_steps``) + bias, the activation 0.125x² + 0.5x + 0.25
(one square pair, one linear combination), 2×2 average pooling, the same
again, then two dense layers. Arithmetic is in Z/2^64 with 16 fractional bits
and two-party local truncation (SecureML, Mohassel & Zhang, S&P 2017). The
dealer deals each batch's tuples (the offline phase) while the batches before
it run, two at a time; ``offline_seconds`` is the time the online phase waited
for tuples.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from mpc.errors import MPCError
from mpc.protocols.encrypted_inference.steps import SCORE
from mpc.protocols.remote_shares import RemoteShared, ShareGroup
from workers.base import Worker
from workers.pointer import Pointer

__all__ = ["MODEL", "POLY", "EncryptedEvalResult", "encrypted_evaluate"]

MODEL = "mpc-cnn"
POLY = (0.25, 0.5, 0.125)  # fl.models.PolyActivation: c + b·x + a·x², low degree first
_LAYERS = ("conv1", "conv2", "fc1", "fc2")
_IMAGE = (1, 28, 28)


@dataclass(frozen=True)
class EncryptedEvalResult:
    """What the coordinator learns: the data owner's counts, and the costs."""

    correct: int
    num_images: int
    seconds: float
    setup_seconds: float
    offline_seconds: float
    online_seconds: float
    bytes_moved: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.num_images if self.num_images else 0.0


def _forward(
    x: RemoteShared, w: Mapping[str, RemoteShared], poly: tuple[float, ...]
) -> RemoteShared:
    """mpc-cnn on a batch of shared images; the logits, still shared."""
    for name in ("conv1", "conv2"):
        channels = w[f"{name}.weight"].shape[0]
        x = x.conv2d(w[f"{name}.weight"], padding=2) + w[f"{name}.bias"].reshape(channels, 1, 1)
        x = x.polynomial(poly).avg_pool2d(2)
    x = (x.flatten(1) @ w["fc1.weight.t"] + w["fc1.bias"]).polynomial(poly)
    return x @ w["fc2.weight.t"] + w["fc2.bias"]


def encrypted_evaluate(
    *,
    data_owner: Worker,
    model_owner: Worker,
    dealer: Worker,
    images_id: str,
    labels_id: str,
    weight_ids: Mapping[str, str],
    batch_size: int = 250,
    poly: tuple[float, float, float] = POLY,
    parallel: bool = False,
) -> EncryptedEvalResult:
    """Classify the data owner's images ``images_id`` (N, 1, 28, 28) with the model
    owner's weights (``weight_ids``: state-dict key → object id on the model owner)
    under MPC; only the data owner sees a prediction, the coordinator its count."""
    missing = {f"{n}.{p}" for n in _LAYERS for p in ("weight", "bias")} - set(weight_ids)
    if missing:
        raise MPCError(f"the model owner's weights lack {sorted(missing)} ({MODEL})")
    if batch_size < 1:
        raise MPCError(f"batch size must be positive, got {batch_size}")
    workers = (data_owner, model_owner, dealer)
    traffic = sum(w.bytes_sent + w.bytes_received for w in workers)
    start = time.perf_counter()
    with ShareGroup([data_owner, model_owner], dealer, parallel=parallel) as group:
        audience = [model_owner, data_owner]
        w = {
            key: group.share(
                Pointer(model_owner, obj_id, owned=False), held=True, audience=audience
            )
            for key, obj_id in weight_ids.items()
        }
        w["fc1.weight.t"], w["fc2.weight.t"] = w["fc1.weight"].t(), w["fc2.weight"].t()
        images = group.share(
            Pointer(data_owner, images_id, owned=False), held=True
        )  # its owner alone
        if tuple(images.shape[1:]) != _IMAGE:
            raise MPCError(f"images of shape {tuple(images.shape)}, expected (N, 1, 28, 28)")
        count = images.shape[0]
        batches = [(s, min(batch_size, count - s)) for s in range(0, count, batch_size)]
        setup = time.perf_counter()
        correct, offline = 0, 0.0

        def batch(first: int, size: int) -> RemoteShared:
            return _forward(images.narrow(0, first, size), w, poly)

        def classify(first: int, size: int) -> int:
            """One batch, run, revealed to the data owner and scored by it."""
            logits = batch(first, size)
            held = logits.reveal_to(data_owner, obj_id=f"infer/{group.session}/{first}")
            try:
                reply = data_owner.party_op(
                    SCORE, session=group.session, logits_id=held, labels_id=labels_id, start=first
                )
            finally:
                data_owner.delete([held])  # the coordinator may free it, never read it
            scored = reply["correct"]
            if not isinstance(scored, int) or not 0 <= scored <= size:
                raise MPCError(f"the data owner scored {scored!r} of {size} images")
            return scored

        # Two batches run at once, so that one computes while the other waits on a
        # party, and the dealer deals the next batch meanwhile: three batches' tuples
        # at most, not every batch's. Tuples of one kind are interchangeable, and
        # each batch's are dealt before it starts.
        running: deque[Future[int]] = deque()
        with ThreadPoolExecutor(2, thread_name_prefix="encrypted-eval") as runners:
            ahead = group.deal_ahead(functools.partial(batch, *batches[0]))
            for index, (first, size) in enumerate(batches):
                waited = time.perf_counter()
                ahead.result()
                offline += time.perf_counter() - waited  # dealing the online phase waited for
                if index + 1 < len(batches):
                    ahead = group.deal_ahead(functools.partial(batch, *batches[index + 1]))
                running.append(runners.submit(classify, first, size))
                if len(running) == 2:
                    correct += running.popleft().result()
            while running:
                correct += running.popleft().result()
        end = time.perf_counter()
    moved = sum(w.bytes_sent + w.bytes_received for w in workers) - traffic
    return EncryptedEvalResult(
        correct=correct,
        num_images=count,
        seconds=end - start,
        setup_seconds=setup - start,
        offline_seconds=offline,
        online_seconds=end - setup - offline,
        bytes_moved=moved,
    )
