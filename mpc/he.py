"""CKKS homomorphic encryption (TenSEAL) for aggregation: parameters, contexts, ciphertexts.

CKKS (Cheon, Kim, Kim, Song 2017) encrypts a vector of up to N/2 reals into
one ciphertext; adding ciphertexts adds the vectors slot by slot. Aggregation
needs nothing but additions, so no multiplicative depth is spent:

- ``poly_modulus_degree`` N = 8192: 4096 slots per ciphertext.
- ``coeff_mod_bit_sizes`` = (60, 60): one 60-bit data prime q0 plus the
  special (key-switching) prime. 120 bits in all, far under the 218 bits the
  HE standard allows at N = 8192 for 128-bit security. A ciphertext is two
  polynomials of N words per data prime, so one data prime gives 32 bytes per
  value (the default [60, 40, 40, 60] chain would give 81 bytes serialized, and
  3× slower additions — measured for 1,663,371 values: 135 MB vs 53 MB).
- scale Δ = 2^35. A decrypted slot must satisfy |x·Δ| < q0/2, so every sum
  must stay below 2^(59−35) = 2^24 ≈ 1.7·10⁷ (``PARAMS.max_abs_sum``); each
  client refuses to encrypt values beyond ``max_abs_sum / (2·clients)``. With
  |n_c·w| ≤ 10⁴ and 100 clients the sum is ≤ 10⁶, 16× inside the bound.
- Precision (measured, ``benchmarks``/tests): a fresh public-key encryption
  carries ≈ 3·10⁻⁷ absolute error per slot at Δ = 2^35; a sum of 100 clients'
  ciphertexts of values |x| ≤ 10⁴ decrypts within 10⁻⁴ of the exact sum
  (``SUM_ERROR_BOUND``, a conservative bound for ≤ 100 clients). FedAvg then
  divides by Σ n_c, so the averaged weights are within 10⁻⁴/Σ n_c.

Layout: a vector is cut into chunks of ``slots − 1`` values and each chunk gets
a canary slot of 1.0. The sum of c clients' ciphertexts must decrypt to canaries
of c (within ``CANARY_TOLERANCE``); a ciphertext made under another key, or with
flipped high bits, decrypts to values of order 2^24 and fails the check, so a
round never returns garbage silently. (CKKS ciphertexts are malleable: a small
change to low bits shifts values slightly and is not detected — integrity of
the traffic comes from the authenticated worker channel, not from HE.)

Serialization is TenSEAL's own (SEAL's binary format in a protobuf): data,
never pickle. A context is named by its *fingerprint*, the SHA-256 of its
serialized public part (parameters + public key), so every ciphertext says
which key it was made under.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tenseal as ts
import torch

from mpc.errors import MPCError

__all__ = [
    "CANARY_TOLERANCE",
    "PARAMS",
    "SUM_ERROR_BOUND",
    "CKKSParams",
    "add_ciphertexts",
    "chunk_count",
    "decrypt_sum",
    "encrypt_vector",
    "fingerprint",
    "load_context",
    "new_context",
    "public_context_bytes",
    "secret_context_bytes",
]

CANARY = 1.0
CANARY_TOLERANCE = 1e-3  # measured canary error is ~1e-6; garbage is ~1e7
SUM_ERROR_BOUND = 1e-4  # |decrypted − exact| per slot, sum of <= 100 clients, |x| <= 1e4

Context = Any  # tenseal.Context (no type stubs)


@dataclass(frozen=True, kw_only=True)
class CKKSParams:
    """CKKS parameters; the defaults are the documented choice above."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60)
    scale_bits: int = 35

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def chunk(self) -> int:
        """Values per ciphertext: the slots less the canary."""
        return self.slots - 1

    @property
    def max_abs_sum(self) -> float:
        """Largest |slot| a decrypted sum may hold: q0/2 over the scale."""
        return float(2 ** (sum(self.coeff_mod_bit_sizes[:-1]) - 1 - self.scale_bits))


PARAMS = CKKSParams()


def new_context(params: CKKSParams = PARAMS) -> Context:
    """A fresh CKKS context holding a new secret key (the key holder's)."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    context.global_scale = float(2**params.scale_bits)
    return context


def public_context_bytes(context: Context) -> bytes:
    """Parameters + public key, no secret, relinearization or Galois keys (additions need none)."""
    public = context.copy()
    if public.is_private():
        public.make_context_public()
    data: bytes = public.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return data


def secret_context_bytes(context: Context) -> bytes:
    """Parameters + public and secret key: only ever sent sealed for a client."""
    if not context.is_private():
        raise MPCError("this context holds no secret key")
    data: bytes = context.serialize(
        save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return data


def fingerprint(public_bytes: bytes) -> str:
    """SHA-256 (hex) of a serialized public context: the name of its key."""
    return hashlib.sha256(public_bytes).hexdigest()


def load_context(data: bytes, *, secret: bool, params: CKKSParams = PARAMS) -> Context:
    """A context from bytes, checked to have ``params`` and (not) to hold a secret key."""
    try:
        context = ts.context_from(data)
        first = context.seal_context().data.first_context_data()
        degree = first.parms().poly_modulus_degree()
        data_bits = first.total_coeff_modulus_bit_count()
        scale = context.global_scale
    except Exception as exc:
        raise MPCError(f"not a TenSEAL context ({type(exc).__name__}: {exc})") from None
    want_bits = sum(params.coeff_mod_bit_sizes[:-1])
    if (degree, data_bits, scale) != (
        params.poly_modulus_degree,
        want_bits,
        2.0**params.scale_bits,
    ):
        raise MPCError(
            f"CKKS context has N={degree}, {data_bits} data bits, scale {scale:g}; expected "
            f"N={params.poly_modulus_degree}, {want_bits} bits, scale 2^{params.scale_bits}"
        )
    if context.is_private() != secret:
        raise MPCError(f"expected a {'secret' if secret else 'public'} CKKS context")
    return context


def chunk_count(length: int, params: CKKSParams = PARAMS) -> int:
    """Ciphertexts for a vector of ``length`` values."""
    return -(-length // params.chunk)


def encrypt_vector(
    context: Context, values: torch.Tensor, params: CKKSParams = PARAMS
) -> list[bytes]:
    """``values`` (1-D) as serialized ciphertexts of ``slots − 1`` values + a canary each.

    Explicit chunks (not TenSEAL's internal splitting of long vectors) so that
    each ciphertext carries its own canary and can be checked on its own.
    """
    flat = values.detach().reshape(-1).to(torch.float64)
    out: list[bytes] = []
    for start in range(0, flat.numel(), params.chunk):
        chunk = flat[start : start + params.chunk].tolist()
        chunk.append(CANARY)
        out.append(ts.ckks_vector(context, chunk).serialize())
    return out


def _load_vector(context: Context, data: bytes, what: str) -> Any:
    try:
        return ts.ckks_vector_from(context, data)
    except Exception as exc:
        raise MPCError(f"{what} is not a ciphertext of this context ({exc})") from None


def add_ciphertexts(
    context: Context, ciphertexts: Sequence[Sequence[bytes]], names: Sequence[str] = ()
) -> list[bytes]:
    """Σ over clients of their chunk-wise ciphertexts, computed under ``context`` (public).

    Every client must send the same number of chunks of the same sizes.
    """
    if not ciphertexts:
        raise MPCError("no ciphertexts to add")
    names = list(names) or [f"client {i}" for i in range(len(ciphertexts))]
    counts = {len(c) for c in ciphertexts}
    if len(counts) != 1:
        raise MPCError(f"clients sent different numbers of ciphertexts: {sorted(counts)}")
    total: list[bytes] = []
    for index in range(len(ciphertexts[0])):
        acc = None
        for name, chunks in zip(names, ciphertexts, strict=True):
            vector = _load_vector(context, chunks[index], f"chunk {index} from {name}")
            if acc is not None and vector.size() != acc.size():
                raise MPCError(
                    f"chunk {index} from {name} has {vector.size()} slots, others {acc.size()}"
                )
            acc = vector if acc is None else acc.add_(vector)
        assert acc is not None
        total.append(acc.serialize())
    return total


def decrypt_sum(
    context: Context,
    ciphertexts: Sequence[bytes],
    *,
    length: int,
    count: int,
    params: CKKSParams = PARAMS,
) -> torch.Tensor:
    """The float64 vector of ``length`` values a sum of ``count`` clients' ciphertexts holds.

    Every chunk's canary must come out as ``count``; otherwise the sum mixes
    keys, was tampered with, or counts other clients than claimed.
    """
    if len(ciphertexts) != chunk_count(length, params):
        raise MPCError(
            f"{len(ciphertexts)} ciphertexts cannot hold {length} values "
            f"({chunk_count(length, params)} expected)"
        )
    parts: list[torch.Tensor] = []
    for index, data in enumerate(ciphertexts):
        vector = _load_vector(context, data, f"summed chunk {index}")
        want = min(params.chunk, length - index * params.chunk) + 1
        if vector.size() != want:
            raise MPCError(f"summed chunk {index} has {vector.size()} slots, expected {want}")
        plain = torch.tensor(vector.decrypt(), dtype=torch.float64)
        canary = float(plain[-1])
        if abs(canary - count * CANARY) > CANARY_TOLERANCE:
            raise MPCError(
                f"chunk {index} decrypts to canary {canary:.6g}, expected {count}: the sum holds "
                "a ciphertext under another key, a tampered one, or other clients; not used"
            )
        parts.append(plain[:-1])
    return torch.cat(parts)
