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
- **Symmetric (secret-key) encryption.** Every client holds the secret key
  anyway (the key holder shares it), so clients encrypt with it: SEAL's
  secret-key encryption skips the public-key product and is 2.1× faster here
  (1.11 vs 2.31 ms per 4,096-slot ciphertext) with 10× less fresh noise. The
  coordinator's context then holds *no key at all* — parameters only (84
  bytes): it can load and add ciphertexts but can neither decrypt nor encrypt,
  so it cannot forge a client's ciphertext.
- Precision (measured, tests): a fresh secret-key encryption carries
  ≈ 1·10⁻⁷ absolute error per slot at Δ = 2^35; a sum of 100 clients'
  ciphertexts of values |x| ≤ 10⁴ decrypts within 10⁻⁴ of the exact sum
  (``SUM_ERROR_BOUND``, a conservative bound for ≤ 100 clients). FedAvg then
  divides by Σ n_c, so the averaged weights are within 10⁻⁴/Σ n_c.

Layout: a vector is cut into chunks of ``slots − CANARY_SLOTS`` values and each
chunk ends in ``CANARY_SLOTS`` *keyed canaries*: values in [1, 256) that only
key holders can compute (SHAKE-256 of a key derived from the secret context and
the client's id, :func:`canaries`). The key holder decrypts a sum only if every
chunk's canaries equal the sum of the canaries of exactly the clients it gave
the key to (within ``CANARY_TOLERANCE``). So a ciphertext under another key, a
tampered one, a missing client, or a coordinator's integer combination of
ciphertexts other than the plain sum (such as client A's ciphertext added to
itself to pass for "A + B") fails the check: for a fixed combination each
slot matches with probability ≈ 2·10⁻³/255 ≈ 2⁻¹⁷, all four ≈ 2⁻⁶⁸, and the key
holder decrypts once per session. CKKS ciphertexts stay malleable beyond
integer combinations (plaintext additions and slot-wise plaintext products at a
small scale): HE alone does not stop a malicious coordinator from, e.g.,
masking slots; that needs threshold decryption or proofs, and is why
``--aggregation secure`` (a committee, no single key) is the stronger choice.

Serialization is TenSEAL's own (SEAL's binary format in a protobuf): data,
never pickle. A key is named by its *key id*, the SHA-256 of a domain tag and
the serialized secret context: every client and the coordinator agree on it,
and a hash reveals nothing of the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
import torch

from mpc.errors import MPCError

__all__ = [
    "CANARY_SLOTS",
    "CANARY_TOLERANCE",
    "PARAMS",
    "SUM_ERROR_BOUND",
    "CKKSParams",
    "add_ciphertexts",
    "canaries",
    "chunk_count",
    "decrypt_sum",
    "encrypt_vector",
    "key_id",
    "load_context",
    "new_context",
    "public_context_bytes",
    "secret_context_bytes",
]

CANARY_SLOTS = 4
CANARY_LOW, CANARY_HIGH = 1.0, 256.0  # keyed canaries are uniform in [1, 256)
CANARY_TOLERANCE = 1e-3  # measured canary error is ~1e-7; a wrong sum is off by ~U(0, 255)
SUM_ERROR_BOUND = 1e-4  # |decrypted − exact| per slot, sum of <= 100 clients, |x| <= 1e4
_KEY_ID_TAG = b"fedsim/he/key-id\x00"
_CANARY_TAG = b"fedsim/he/canary-key\x00"

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
        """Values per ciphertext: the slots less the canaries."""
        return self.slots - CANARY_SLOTS

    @property
    def max_abs_sum(self) -> float:
        """Largest |slot| a decrypted sum may hold: q0/2 over the scale."""
        return float(2 ** (sum(self.coeff_mod_bit_sizes[:-1]) - 1 - self.scale_bits))


PARAMS = CKKSParams()


def new_context(params: CKKSParams = PARAMS) -> Context:
    """A fresh CKKS context holding a new secret key (the key holder's), secret-key encryption."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    context.global_scale = float(2**params.scale_bits)
    return context


def public_context_bytes(context: Context) -> bytes:
    """The coordinator's context: parameters and scale only, no key of any kind.

    With it ciphertexts can be loaded and added, not decrypted or made.
    """
    data: bytes = context.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return data


def secret_context_bytes(context: Context) -> bytes:
    """Parameters + secret key: only ever sent sealed for a client. Deterministic bytes."""
    if not context.is_private():
        raise MPCError("this context holds no secret key")
    data: bytes = context.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return data


def key_id(context: Context) -> str:
    """SHA-256 (hex) of a tag and the secret context: names the key without revealing it."""
    return hashlib.sha256(_KEY_ID_TAG + secret_context_bytes(context)).hexdigest()


def canaries(
    context: Context, client_id: str, chunks: int, params: CKKSParams = PARAMS
) -> torch.Tensor:
    """Client ``client_id``'s keyed canaries, (chunks, CANARY_SLOTS) float64 in [1, 256).

    SHAKE-256 over a key derived from the secret context and the client id:
    every key holder can compute any client's canaries, the coordinator none.
    Each value takes 53 random bits of the stream.
    """
    del params  # the layout is fixed by CANARY_SLOTS; kept for a uniform signature
    key = hashlib.sha256(_CANARY_TAG + secret_context_bytes(context)).digest()
    stream = hashlib.shake_256(key + client_id.encode()).digest(8 * chunks * CANARY_SLOTS)
    bits = np.frombuffer(stream, dtype=np.uint64) >> np.uint64(11)
    uniform = torch.from_numpy(bits.astype(np.float64) / 2.0**53)
    return (CANARY_LOW + (CANARY_HIGH - CANARY_LOW) * uniform).reshape(chunks, CANARY_SLOTS)


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
    context: Context, values: torch.Tensor, marks: torch.Tensor, params: CKKSParams = PARAMS
) -> list[bytes]:
    """``values`` (1-D) as serialized ciphertexts of ``chunk`` values + their canaries each.

    ``marks`` is the client's (chunks, CANARY_SLOTS) canaries (:func:`canaries`).
    Explicit chunks (not TenSEAL's internal splitting of long vectors) so that
    each ciphertext carries its own canaries and is checked on its own.
    """
    flat = values.detach().reshape(-1).to(torch.float64)
    if tuple(marks.shape) != (chunk_count(flat.numel(), params), CANARY_SLOTS):
        raise MPCError(f"canaries of shape {tuple(marks.shape)} do not fit {flat.numel()} values")
    out: list[bytes] = []
    for index, start in enumerate(range(0, flat.numel(), params.chunk)):
        chunk = torch.cat([flat[start : start + params.chunk], marks[index]]).tolist()
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
    expected: torch.Tensor,
    params: CKKSParams = PARAMS,
) -> torch.Tensor:
    """The float64 vector of ``length`` values a sum of clients' ciphertexts holds.

    ``expected`` is the sum of the canaries of the clients the sum must hold,
    (chunks, CANARY_SLOTS). Every chunk's canaries must decrypt to it;
    otherwise the sum mixes keys, was tampered with, or holds other clients
    (or other multiples of them) than claimed, and nothing is returned.
    """
    chunks = chunk_count(length, params)
    if len(ciphertexts) != chunks or tuple(expected.shape) != (chunks, CANARY_SLOTS):
        raise MPCError(
            f"{len(ciphertexts)} ciphertexts cannot hold {length} values ({chunks} expected)"
        )
    parts: list[torch.Tensor] = []
    for index, data in enumerate(ciphertexts):
        vector = _load_vector(context, data, f"summed chunk {index}")
        want = min(params.chunk, length - index * params.chunk) + CANARY_SLOTS
        if vector.size() != want:
            raise MPCError(f"summed chunk {index} has {vector.size()} slots, expected {want}")
        plain = torch.tensor(vector.decrypt(), dtype=torch.float64)
        off = float((plain[-CANARY_SLOTS:] - expected[index]).abs().max())
        if not off <= CANARY_TOLERANCE:  # `not <=` so that NaN fails too
            raise MPCError(
                f"chunk {index}'s canaries are off by {off:.3g}: the sum holds a ciphertext "
                "under another key, a tampered one, or other clients than claimed; not used"
            )
        parts.append(plain[:-CANARY_SLOTS])
    return torch.cat(parts)
