"""SPDZ authenticated shares: information-theoretic MACs over F_p.

A value x is held as ⟨x⟩ = ([x], [α·x]): additive shares of x and of its MAC
α·x, for a global key α that is itself additively shared and known to no one
(Damgård, Pastro, Smart, Zakarias, "Multiparty Computation from Somewhat
Homomorphic Encryption", CRYPTO 2012). Both parts are linear, so parties add
authenticated shares locally, and a public constant c is added as
[x + c] = [x] + c (party 0 only) and [α(x + c)] = [αx] + c·[α].

A party that lies about its share of an opened value by δ ≠ 0 must also shift
the MAC sum by α·δ, i.e. guess α: probability 1/(p − 1) with α uniform and
nonzero. Opened values are checked in a batch without revealing α, as in
Damgård, Keller, Larraia, Pastro, Scholl, Smart, "Practical Covertly Secure
MPC for Dishonest Majority", ESORICS 2013 (protocol MACCheck).

Inputs. A trusted dealer hands the inputting client a random mask r and the
parties ⟨r⟩ (``authenticated_mask``); the client publishes ε = x − r
(``mask_input``), which reveals nothing about x, and each party derives
⟨x⟩ = ⟨r⟩ + ε (``input_shares``). All arithmetic is in F_p, p = 2^61 − 1
(``mpc.field`` explains why not Z/2^64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from mpc.errors import MPCError
from mpc.field import (
    P,
    check_field,
    field_add,
    field_mul,
    field_mul_scalar,
    field_random,
    field_sub,
    field_sum,
)
from mpc.random import SecureRandom

__all__ = [
    "AuthenticatedMask",
    "authenticated_mask",
    "input_shares",
    "mac_check",
    "mac_check_share",
    "mask_input",
    "random_coefficients",
    "reconstruct_field",
    "share_field",
    "share_mac_key",
]


class AuthenticatedMask(NamedTuple):
    """Dealer output for one input: the mask r (for the client only), the
    parties' shares of r and their shares of the MAC α·r."""

    mask: torch.Tensor
    shares: list[torch.Tensor]
    mac_shares: list[torch.Tensor]


def share_field(secret: torch.Tensor, parties: int, rng: SecureRandom) -> list[torch.Tensor]:
    """Split field elements into ``parties`` additive shares modulo p.

    The first n − 1 shares are uniform in F_p, so any n − 1 of them are
    independent of the secret; the last makes the sum come out right.
    """
    if parties < 2:
        raise MPCError(f"secret sharing needs at least 2 parties, got {parties}")
    check_field(secret, "secret")
    shares = [field_random(secret.shape, rng) for _ in range(parties - 1)]
    last = secret
    for masked in shares:
        last = field_sub(last, masked)
    shares.append(last)
    return shares


def reconstruct_field(shares: Sequence[torch.Tensor]) -> torch.Tensor:
    """The secret: the sum of all shares modulo p."""
    if len(shares) < 2:
        raise MPCError(f"reconstruction needs every share (at least 2), got {len(shares)}")
    shape = shares[0].shape
    total = torch.zeros(shape, dtype=torch.int64)
    for index, part in enumerate(shares):
        if part.shape != shape:
            raise MPCError(f"share {index} has shape {tuple(part.shape)}, expected {tuple(shape)}")
        check_field(part, f"share {index}")
        total = field_add(total, part)
    return total


def share_mac_key(parties: int, rng: SecureRandom) -> tuple[int, list[int]]:
    """A MAC key α, uniform and nonzero in F_p, and its additive shares α_i.

    α = 0 would make every MAC zero and accept any error; excluding it costs a
    redraw with probability 2^-61. Only a trusted dealer (or a key-generation
    protocol) ever sees α itself.
    """
    alpha = 0
    while alpha == 0:
        alpha = int(field_random((1,), rng)[0])
    shares = share_field(torch.tensor([alpha], dtype=torch.int64), parties, rng)
    return alpha, [int(part[0]) for part in shares]


def authenticated_mask(
    shape: tuple[int, ...] | torch.Size, parties: int, alpha: int, rng: SecureRandom
) -> AuthenticatedMask:
    """Dealer side: a uniform mask r of ``shape`` with shares of r and of α·r."""
    if not 0 < alpha < P:
        raise MPCError(f"MAC key must be in 1..p − 1, got {alpha}")
    mask = field_random(shape, rng)
    return AuthenticatedMask(
        mask=mask,
        shares=share_field(mask, parties, rng),
        mac_shares=share_field(field_mul_scalar(mask, alpha), parties, rng),
    )


def mask_input(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Client side: ε = x − r, safe to publish because r is uniform and used once."""
    return field_sub(value, mask)


def input_shares(
    eps: torch.Tensor,
    r_share: torch.Tensor,
    mac_r_share: torch.Tensor,
    alpha_share: int,
    party_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This party's (share of x, share of α·x) from the published ε = x − r.

    [x] = [r] + ε with only party 0 adding ε; [αx] = [αr] + ε·α_i at every
    party, so the MAC shares sum to α·r + ε·α = α·x. ε comes from a client
    and is range-checked: an out-of-range ε would silently break the MACs.
    """
    if party_index < 0:
        raise MPCError(f"party index must be ≥ 0, got {party_index}")
    check_field(eps, "masked input ε")
    if eps.shape != r_share.shape or eps.shape != mac_r_share.shape:
        raise MPCError(
            f"masked input has shape {tuple(eps.shape)}, mask shares "
            f"{tuple(r_share.shape)} and {tuple(mac_r_share.shape)}"
        )
    x_share = field_add(r_share, eps) if party_index == 0 else r_share.clone()
    return x_share, field_add(mac_r_share, field_mul_scalar(eps, alpha_share))


def random_coefficients(length: int, rng: SecureRandom) -> torch.Tensor:
    """``length`` uniform coefficients ρ_k for one batched MAC check.

    Deployed, ``rng`` must stand for a coin no party controls (each commits to
    a seed, then all open and combine them) and must be drawn only after the
    values under check are opened; see ``mac_check_share``.
    """
    if length < 1:
        raise MPCError(f"a MAC check needs at least one coefficient, got {length}")
    return field_random((length,), rng)


def mac_check_share(
    opened: torch.Tensor, mac_share: torch.Tensor, alpha_share: int, rho: torch.Tensor
) -> int:
    """Party i's σ_i = Σ_k ρ_k·(m_i,k − α_i·y_k) for opened values y.

    Summed over parties, σ = Σ_k ρ_k·e_k with e_k = Σ_i m_i,k − α·y_k, the
    MAC error at position k, which is 0 for honest shares. Soundness (DKLPSS13):
    a cheat that leaves every e_k = 0 has guessed α (≤ 1/(p − 1)); any other
    gives σ = 0 for at most a 1/p fraction of ρ. So a cheat passes with
    probability ≤ 2/(p − 1) ≈ 2^-60 per check, given three conditions:

    - ρ is drawn *after* y is opened. Knowing ρ in advance, a cheater shifts
      two opened values by δ_1, δ_2 with ρ_1δ_1 + ρ_2δ_2 = 0; then
      σ = −α·(ρ_1δ_1 + ρ_2δ_2) = 0 whatever α is.
    - Each party commits to σ_i before any σ_j is revealed; otherwise the last
      to speak picks σ_i = −Σ_{j≠i} σ_j.
    - Nothing uses y until the check has passed: a tampered aggregate applied
      to the model, or fed into further computation, has done its harm already.
    """
    if opened.shape != mac_share.shape:
        raise MPCError(
            f"opened values {tuple(opened.shape)} and MAC shares "
            f"{tuple(mac_share.shape)} differ in shape"
        )
    if rho.shape != (opened.numel(),):
        raise MPCError(f"need {opened.numel()} coefficients ρ, got shape {tuple(rho.shape)}")
    check_field(opened, "opened values")
    errors = field_sub(mac_share, field_mul_scalar(opened, alpha_share)).reshape(-1)
    return int(field_sum(field_mul(rho, errors)))


def mac_check(sigmas: Sequence[int]) -> bool:
    """Whether the opened values are authentic: Σ_i σ_i ≡ 0 (mod p)."""
    if len(sigmas) < 2:
        raise MPCError(f"a MAC check needs every party's σ (at least 2), got {len(sigmas)}")
    return sum(sigmas) % P == 0
