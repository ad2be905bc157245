"""The prime field F_p, p = 2^61 − 1, and fixed-point encoding of reals into it.

Why not Z/2^64. SPDZ MACs (``mpc.mac``) catch a cheater because an additive
error δ on a value needs the matching error α·δ on its MAC, and α is unknown.
In Z/2^64 that fails: δ = 2^63 gives α·δ = 2^63·(α mod 2), so guessing the
parity of α passes the check with probability 1/2. SPDZ2k repairs it by
computing in Z/2^(k+s) (Cramer, Damgård, Escudero, Scholl, Xing, CRYPTO 2018);
a prime field is the simpler fix, since every δ ≠ 0 is invertible there.

Why 2^61 − 1. It is a Mersenne prime, so 2^61 ≡ 1 (mod p) and reduction is a
mask and a shift, and it is small enough that an element splits into limbs of
31 and 30 bits whose products fit in int64. Elements are int64 tensors in
[0, p); no function here leaves that range or goes through Python ints, so
everything vectorises. Inputs are not range-checked per operation (that would
double the cost); ``check_field`` is for values that arrive from elsewhere.

Encoding. A real x becomes round(x · 2^f) with f fractional bits, negatives
as p − |v|, as in ``mpc.ring``. Encodings are refused at |round(x · 2^f)| ≥
2^50, so a sum of up to 2^10 = 1024 of them stays below p/2 in magnitude and
still decodes to the right sign; larger sums must be bounded by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mpc.errors import MPCError
from mpc.random import SecureRandom, expand

__all__ = [
    "ENCODING_LIMIT",
    "MAX_SUMMANDS",
    "P",
    "check_field",
    "field_add",
    "field_decode",
    "field_decode_int",
    "field_encode",
    "field_encode_int",
    "field_expand",
    "field_matmul",
    "field_mul",
    "field_mul_scalar",
    "field_neg",
    "field_random",
    "field_sub",
    "field_sum",
]

P = 2**61 - 1
ENCODING_LIMIT = 2**50  # |encoded integer| must be below this; 2^10 of them sum below p/2
MAX_SUMMANDS = 2**10  # how many encodings a sum may hold and still decode correctly

_LOW29 = (1 << 29) - 1
_LOW30 = (1 << 30) - 1
_LOW31 = (1 << 31) - 1
_LOW32 = (1 << 32) - 1
_CHUNK = 2**16  # elements per field_mul step: a few MB of temporaries
_MAX_FIELD_SUM = 2**31  # field_sum's limb sums stay below 2^63 for fewer terms than this


def _lift(d: torch.Tensor) -> torch.Tensor:
    """d + p where d < 0, in place on a fresh tensor d ∈ [−p, p): branch-free,
    since the arithmetic shift d >> 63 is all ones exactly for negative d."""
    return d.add_((d >> 63).bitwise_and_(P))


def _reduce(x: torch.Tensor) -> torch.Tensor:
    """x mod p for a fresh int64 tensor 0 ≤ x < 2^63, which it overwrites.

    2^61 ≡ 1 gives x ≡ (x mod 2^61) + ⌊x / 2^61⌋ ≤ p + 3; one conditional
    subtraction of p finishes.
    """
    high = x >> 61
    return _lift(x.bitwise_and_(P).add_(high).sub_(P))


def check_field(t: torch.Tensor, what: str = "tensor") -> None:
    """Raise MPCError unless ``t`` is an int64 tensor of elements in [0, p).

    For values received from other parties or clients: arithmetic on
    out-of-range inputs silently returns wrong elements.
    """
    if t.dtype != torch.int64:
        raise MPCError(f"{what} must hold field elements (int64), got {t.dtype}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= P):
        raise MPCError(f"{what} has values outside [0, 2^61 − 1): {int(t.min())}..{int(t.max())}")


def field_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b mod p (the sum is below 2^62, so one conditional subtraction)."""
    return _lift((a + b).sub_(P))


def field_sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a − b mod p."""
    return _lift(a - b)


def field_neg(a: torch.Tensor) -> torch.Tensor:
    """−a mod p (0 stays 0 rather than becoming p)."""
    return _lift(torch.neg(a))


def field_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a · b mod p, exactly, for broadcastable int64 tensors in [0, p).

    Large operands go through ``_mul`` in chunks of 2^16 elements: its dozen
    temporaries then stay in cache and the allocator reuses their memory
    (docs/mpc-and-he.md, "Malicious security").
    """
    wide_a, wide_b = torch.broadcast_tensors(a, b)  # type: ignore[no-untyped-call]
    shape, count = wide_a.shape, wide_a.numel()
    if count <= _CHUNK:
        return _mul(a, b)
    flat_a, flat_b = wide_a.reshape(-1), wide_b.reshape(-1)  # copies only mixed-stride views
    out = torch.empty(count, dtype=torch.int64)
    for start in range(0, count, _CHUNK):
        stop = start + _CHUNK
        out[start:stop] = _mul(flat_a[start:stop], flat_b[start:stop])
    return out.reshape(shape)


def _mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a · b mod p for broadcastable int64 tensors in [0, p), in one piece.

    Limbs a = a_hi·2^31 + a_lo with a_lo < 2^31, a_hi < 2^30 (same for b) give
    a·b = a_hi·b_hi·2^62 + mid·2^31 + a_lo·b_lo with mid = a_hi·b_lo + a_lo·b_hi.
    Every partial product is below 2^62, and 2^62 ≡ 2, 2^61 ≡ 1 fold the high
    parts back; the bound on each term is noted on its line.
    """
    a_hi, a_lo = a >> 31, a & _LOW31
    b_hi, b_lo = b >> 31, b & _LOW31
    # In-place steps below touch only fresh products of the broadcast shape.
    acc = (a_hi * b_hi).mul_(2)  # a_hi·b_hi·2^62 ≡ 2·a_hi·b_hi < 2^61
    mid = (a_hi * b_lo).add_(a_lo * b_hi)  # < 2^62
    # mid·2^31 = ⌊mid/2^30⌋·2^61 + (mid mod 2^30)·2^31 ≡ ⌊mid/2^30⌋ + (mid mod 2^30)·2^31
    acc.add_(mid >> 30).add_(mid.bitwise_and_(_LOW30).bitwise_left_shift_(31))  # < 2^62 + 2^32
    low = a_lo * b_lo  # < 2^62, ≡ (low mod 2^61) + ⌊low / 2^61⌋
    acc.add_(low >> 61).add_(low.bitwise_and_(P))  # < 3·2^61 + 2^33 < 2^63
    return _reduce(acc)


def field_mul_scalar(a: torch.Tensor, s: int) -> torch.Tensor:
    """a · s mod p for a Python integer ``s`` (any sign or size)."""
    return field_mul(a, torch.tensor(s % P, dtype=torch.int64))


def field_sum(t: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ t mod p over ``dim`` (all elements if None), without int64 overflow.

    A plain ``sum`` overflows after four elements of 61 bits. Instead the low
    32 and high 29 bits are summed separately (each sum < 2^63 for fewer than
    2^31 terms) and recombined with hi·2^32 ≡ ⌊hi/2^29⌋ + (hi mod 2^29)·2^32.
    """
    terms = t.numel() if dim is None else t.shape[dim]
    if terms >= _MAX_FIELD_SUM:
        raise MPCError(f"field_sum takes fewer than 2^31 terms, got {terms}")
    low, high = t & _LOW32, t >> 32
    low = _reduce(low.sum() if dim is None else low.sum(dim))
    high = _reduce(high.sum() if dim is None else high.sum(dim))
    high = (high >> 29) + ((high & _LOW29) << 32)  # high·2^32 mod p, < 2^32 + 2^61
    return _reduce(high + low)


def field_random(shape: tuple[int, ...] | torch.Size, rng: SecureRandom) -> torch.Tensor:
    """Exactly uniform elements of F_p, by rejection sampling.

    The low 61 bits of a uniform 64-bit word are uniform on [0, 2^61) = [0, p];
    the single value p (probability 2^-61 per element) is redrawn.
    """
    count = math.prod(shape)
    values = rng.ring_elements((count,)) & P
    rejected = values == P
    while bool(rejected.any()):
        values[rejected] = rng.ring_elements((int(rejected.sum()),)) & P
        rejected = values == P
    return values.reshape(tuple(shape))


def field_expand(seed: bytes, stream: int, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Field elements from stream ``stream`` of a seed's keystream (``mpc.random.expand``).

    The low 61 bits of a uniform word are uniform on [0, p]; the one value p is
    mapped to 0, so each element is within statistical distance 2^-61 of
    uniform — rejection sampling, as ``field_random`` does, would make a
    seed's stream length depend on its values.
    """
    values = expand(seed, stream, tuple(shape)).bitwise_and_(P)
    return values.masked_fill_(values == P, 0)


_LIMB = 21  # field_matmul's limbs: 21-bit products sum below 2^63 over 2^21 terms
_LIMB_MASK = (1 << _LIMB) - 1


def _times_power_of_two(x: torch.Tensor, shift: int) -> torch.Tensor:
    """x · 2^shift mod p for x in [0, p): a rotation of the 61 bits, as 2^61 ≡ 1."""
    shift %= 61
    if not shift:
        return x
    rotated = (x << shift).bitwise_and_(P).bitwise_or_(x >> (61 - shift))
    return rotated.masked_fill_(rotated == P, 0)  # p itself is 0


def field_matmul(
    a: torch.Tensor, b: torch.Tensor, op: Callable[..., torch.Tensor] | None = None, **kwargs: int
) -> torch.Tensor:
    """``op(a, b)`` mod p for a bilinear ``op`` (default matmul) of field tensors.

    Each operand splits into three limbs of 21 bits; a product of two limbs is
    below 2^42, so a sum of up to 2^21 of them stays below 2^63 and torch's
    int64 ``op`` is exact. The nine limb products are reduced and weighted by
    2^(21(i+j)) — a rotation in this Mersenne field — and added up.
    """
    bilinear: Callable[..., torch.Tensor] = torch.matmul if op is None else op
    limbs_a = [(a >> (_LIMB * i)) & _LIMB_MASK for i in range(3)]
    limbs_b = [(b >> (_LIMB * j)) & _LIMB_MASK for j in range(3)]
    total: torch.Tensor | None = None
    for weight in range(5):  # i + j
        part: torch.Tensor | None = None
        for i in range(max(0, weight - 2), min(2, weight) + 1):
            product = _reduce(bilinear(limbs_a[i], limbs_b[weight - i], **kwargs))
            part = product if part is None else field_add(part, product)
        assert part is not None
        part = _times_power_of_two(part, _LIMB * weight)
        total = part if total is None else field_add(total, part)
    assert total is not None
    return total


def _check_fractional_bits(fractional_bits: int) -> None:
    if not 0 <= fractional_bits <= 32:
        raise MPCError(f"fractional bits must be in 0..32, got {fractional_bits}")


def field_encode_int(values: torch.Tensor) -> torch.Tensor:
    """Signed int64 integers as field elements (v ↦ v mod p); |v| < ENCODING_LIMIT."""
    if values.dtype != torch.int64:
        raise MPCError(f"integers to encode must be int64, got {values.dtype}")
    if values.numel() and int(values.abs().max()) >= ENCODING_LIMIT:
        raise MPCError(
            f"integer {int(values.abs().max())} is outside the field encoding range ±2^50"
        )
    return torch.where(values < 0, values + P, values)


def field_decode_int(t: torch.Tensor) -> torch.Tensor:
    """Field elements as signed int64: values above p // 2 are negative."""
    return torch.where(t > P // 2, t - P, t)


def field_encode(values: torch.Tensor | float, fractional_bits: int = 16) -> torch.Tensor:
    """round(x · 2^f) as field elements; MPCError for NaN, ±inf or out-of-range x."""
    _check_fractional_bits(fractional_bits)
    x = torch.as_tensor(values, dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise MPCError("cannot encode NaN or infinity")
    scaled = torch.round(x * float(2**fractional_bits))
    if scaled.numel() and float(scaled.abs().max()) >= ENCODING_LIMIT:
        worst = float(x.flatten()[int(scaled.abs().argmax())])
        limit = ENCODING_LIMIT / 2**fractional_bits
        raise MPCError(
            f"value {worst:g} is outside the field fixed-point range ±{limit:g} "
            f"({fractional_bits} fractional bits, encodings below 2^50)"
        )
    return field_encode_int(scaled.to(torch.int64))


def field_decode(t: torch.Tensor, fractional_bits: int = 16) -> torch.Tensor:
    """The float64 reals of field encodings (values above p // 2 are negative)."""
    _check_fractional_bits(fractional_bits)
    return field_decode_int(t).to(torch.float64) / float(2**fractional_bits)
