"""Beaver's multiplication of secret-shared ring elements, and fixed-point truncation.

All functions take and return lists of shares, one per party, and simulate the
parties' local steps in one process; the messages a real deployment sends are
exactly the openings marked below (``workers``-based protocols move them).
"""

from __future__ import annotations

from typing import Any

from mpc.errors import MPCError
from mpc.provider import BILINEAR_OPS, Shares, TupleProvider
from mpc.sharing import reconstruct

__all__ = ["beaver", "conv2d", "matmul", "mul", "square", "truncate"]


def beaver(op: str, x: Shares, y: Shares, provider: TupleProvider, **kwargs: Any) -> Shares:
    """Shares of op(x, y) for a bilinear ``op`` (Beaver, CRYPTO 1991).

    Protocol, with a triple [a], [b], [c = op(a, b)] from the provider:

    1. every party i computes e_i = x_i − a_i and f_i = y_i − b_i;
    2. the parties open e = Σ e_i and f = Σ f_i (the only communication; e and f
       are x and y masked by uniformly random a and b, so they reveal nothing);
    3. party i computes z_i = c_i + op(e, b_i) + op(a_i, f), and party 0 also
       adds op(e, f);
    4. Σ z_i = op(a, b) + op(e, b) + op(a, f) + op(e, f) = op(x, y) by bilinearity.

    Results carry the scale of both factors (2f fractional bits for fixed point):
    call :func:`truncate` afterwards.
    """
    if len(x) != len(y) or len(x) != provider.parties:
        raise MPCError(f"{len(x)} and {len(y)} shares for a provider of {provider.parties} parties")
    operation = BILINEAR_OPS.get(op)
    if operation is None:
        raise MPCError(f"no Beaver multiplication for {op!r}")
    a, b, c = provider.beaver_triple(op, tuple(x[0].shape), tuple(y[0].shape), **kwargs)
    e = reconstruct([xi - ai for xi, ai in zip(x, a, strict=True)])  # opened
    f = reconstruct([yi - bi for yi, bi in zip(y, b, strict=True)])  # opened
    z = [
        ci + operation(e, bi, **kwargs) + operation(ai, f, **kwargs)
        for ai, bi, ci in zip(a, b, c, strict=True)
    ]
    z[0] = z[0] + operation(e, f, **kwargs)
    return z


def mul(x: Shares, y: Shares, provider: TupleProvider) -> Shares:
    """Elementwise product of two shared tensors (untruncated)."""
    return beaver("mul", x, y, provider)


def matmul(x: Shares, y: Shares, provider: TupleProvider) -> Shares:
    """Matrix product of two shared tensors (untruncated)."""
    return beaver("matmul", x, y, provider)


def conv2d(x: Shares, w: Shares, provider: TupleProvider, **kwargs: Any) -> Shares:
    """2-D convolution of shared inputs with shared weights (untruncated)."""
    return beaver("conv2d", x, w, provider, **kwargs)


def square(x: Shares, provider: TupleProvider) -> Shares:
    """x · x with a square pair [a], [a²]: open e = x − a; x² = a² + 2ea + e²."""
    a, a2 = provider.square_pair(tuple(x[0].shape))
    e = reconstruct([xi - ai for xi, ai in zip(x, a, strict=True)])  # opened
    z = [a2i + 2 * e * ai for ai, a2i in zip(a, a2, strict=True)]
    z[0] = z[0] + e * e
    return z


def truncate(x: Shares, bits: int, provider: TupleProvider) -> Shares:
    """Shares of x / 2^bits (to within one unit in the last place), for any number of parties.

    Two parties divide locally (SecureML, Mohassel & Zhang 2017, Thm. 1): party
    0 shifts its share, party 1 negates, shifts and negates back. This is
    correct up to ±1 except with probability about |x| / 2^62.

    More parties cannot do that: their shares wrap around the ring in ways a local
    shift cannot undo, which gives results that are off by 2^(64−bits) (CrypTen
    issue #103; ABY3, Mohassel & Rindal 2018, §5.1). They use a truncation pair
    [r], [r >> bits] instead: open c = x − r (uniformly masked), then
    [x >> bits] = (c >> bits) + [r >> bits] on party 0. This is correct up to ±1
    except with probability about |x| / 2^63, when x − r overflows.
    """
    if bits < 0:
        raise MPCError(f"cannot truncate by {bits} bits")
    if len(x) == 2:
        return [x[0] >> bits, -((-x[1]) >> bits)]
    r, r_shifted = provider.truncation_pair(tuple(x[0].shape), bits)
    c = reconstruct([xi - ri for xi, ri in zip(x, r, strict=True)])  # opened
    z = [part.clone() for part in r_shifted]
    z[0] = z[0] + (c >> bits)
    return z
