"""``ring_conv2d`` (int64 convolution in pieces) gives ``F.conv2d``'s exact bits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mpc.protocols.remote_shares.vault import ring_conv2d


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "stride", "padding"),
    [
        ((250, 1, 28, 28), (16, 1, 5, 5), 1, 2),  # pieces of 25 images
        ((37, 16, 14, 14), (32, 16, 5, 5), 1, 2),  # pieces of 6, the last of 1
        ((9, 3, 11, 7), (4, 3, 3, 2), 2, 1),
        ((1, 2, 5, 5), (3, 2, 5, 5), 1, 0),  # one piece: torch's own call
        ((2, 5, 5), (3, 2, 3, 3), 1, 1),  # unbatched
    ],
)
def test_ring_conv2d_is_conv2d_bit_for_bit(
    x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: int, padding: int
) -> None:
    generator = torch.Generator().manual_seed(sum(x_shape))
    x = torch.randint(-(2**63), 2**63 - 1, x_shape, dtype=torch.int64, generator=generator)
    w = torch.randint(-(2**63), 2**63 - 1, w_shape, dtype=torch.int64, generator=generator)
    expected = F.conv2d(x, w, stride=stride, padding=padding)
    assert torch.equal(ring_conv2d(x, w, stride=stride, padding=padding), expected)
