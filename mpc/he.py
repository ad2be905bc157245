"""CKKS homomorphic encryption (TenSEAL) for aggregation: parameters, keys, noise flooding.

CKKS (Cheon, Kim, Kim, Song, Asiacrypt 2017) encrypts a vector of up to N/2
reals into one ciphertext; adding ciphertexts adds the vectors slot by slot.
Aggregation needs nothing but additions, so no multiplicative depth is spent:

- ``poly_modulus_degree`` N = 8192: 4096 slots per ciphertext.
- ``coeff_mod_bit_sizes`` = (60, 60, 60): a 120-bit data modulus q (two
  primes) plus the special prime, 180 bits in all, under the 218 bits the HE
  standard allows at N = 8192 for 128-bit security. A ciphertext is two
  polynomials of N words per data prime: 64 bytes per value.
- scale Δ = 2^70. A decrypted slot must satisfy |x·Δ| < q/2, so every sum
  stays below 2^(119−70) = 2^49 (``PARAMS.max_abs_sum``); each client refuses
  values beyond ``max_abs_sum / (2·clients)``. The large scale is what makes
  noise flooding cheap (below): the CKKS error shrinks with Δ, and so does the
  flood that must hide it.
- **Public-key encryption.** Only the key holder has the secret key; clients
  and the coordinator get the *public context* (parameters and public key, no
  secret, relinearization or Galois key, :func:`public_context_bytes`). Anyone
  holding it can encrypt, no one can decrypt. A client's ciphertext is
  accepted only with its keyed canaries (below), which the coordinator cannot
  compute, so it cannot pass off a ciphertext of its own as a client's.

Noise flooding (Li & Micciancio, Eurocrypt 2021; Li, Micciancio, Schultz,
Sorrell, Crypto 2022). A CKKS decryption is m + e, and e depends linearly on
the secret key: whoever knows a ciphertext, its plaintext m and the exact
decryption solves for the key. The key holder therefore never releases a
decryption as is, but y = m + e + f with f ~ N(0, σ²) per value, drawn from a
ChaCha20 CSPRNG (:func:`gaussian`, Box–Muller on 53-bit uniforms):

- B bounds |e| per released value (:func:`error_bound`):
  B = k·B_fresh + N·2^-52·M for a sum of k ciphertexts whose largest decrypted
  value is M. B_fresh is the CKKS heuristic bound on a fresh public-key
  encryption: SEAL encrypts at modulus q·p and rescales by the special prime
  p, leaving the rounding error τ0 + τ1·s plus the encoding rounding, at most
  √(N/3)·(6 + 8√h) in the canonical embedding (Cheon et al. 2017, Lemma 2, at
  the worst Hamming weight h = N), over Δ: 3.2·10⁻¹⁷ at Δ = 2^70. The second
  term bounds the double-precision decode (SEAL converts 120-bit coefficients
  to doubles and runs an N-point FFT), ≈ 2000× above its measured maximum.
  Errors of k ciphertexts add, hence k·B_fresh (the triangle inequality; no
  independence is assumed).
- σ (:func:`flooding_sigma`): for d released values, the KL divergence of
  N(m + e, σ²I) from N(m, σ²I) — what a simulator knowing only m outputs — is
  ‖e‖²/(2σ²) ≤ d·B²/(2σ²). Requiring it ≤ 2^-s with s = ``SECURITY_BITS`` = 30
  gives σ = √(d/2)·2^(s/2)·B. This is s bits of statistical security for key
  recovery in the KL (Rényi-1) sense that LMSS 2022 and OpenFHE's
  NOISE_FLOODING_DECRYPT (s = 30 by default) use for search problems, per
  decryption; the statistical distance it implies is ≤ √(KL/2) = 2^-15.5
  (Pinsker). Box–Muller on 53-bit uniforms cuts the tails at 8.57σ
  (probability < 2^-35 over 1.7·10⁶ values). The decode term dominates B,
  so σ ≈ 5.5·10⁻⁵·M for a 1.66 M-value McMahan CNN update: with Σ n_c =
  6·10⁴ and M ≈ 7·10³, σ ≈ 0.4 on the sum, ≈ 7·10⁻⁶ per averaged weight.
  (At the former Δ = 2^35 with one data prime, the 30-bit flood would be
  ≈ 5·10⁻³ per weight, as large as the weights themselves.)

Layout: a vector is cut into chunks of ``slots − CANARY_SLOTS`` values and each
chunk ends in ``CANARY_SLOTS`` *keyed canaries*: values in [1, 256) computed
from the client's *canary key* (:func:`canaries`), which the key holder derives
from a per-session master key and seals for that client alone
(:func:`client_canary_key`). The key holder decrypts a sum only if every
chunk's canaries equal the sum of the canaries of exactly the clients it keyed
(within the error bound B, at most ``CANARY_TOLERANCE``). So a ciphertext under
another key, a tampered one, a missing client, a ciphertext the coordinator
encrypted itself, or an integer combination of ciphertexts other than the plain
sum (such as client A's added to itself to pass for "A + B") fails the check:
for a fixed combination each slot matches with probability ≤ 2·10⁻³/255 ≈ 2⁻¹⁷,
all four ≤ 2⁻⁶⁸, and the key holder decrypts once per session. A client knows
its own canaries only, so a client colluding with the coordinator cannot forge
another client's. CKKS ciphertexts stay malleable beyond integer combinations
(adding plaintexts, slot-wise plaintext products): HE alone does not stop a
malicious coordinator from, e.g., masking slots; that needs threshold
decryption or proofs, and is why ``--aggregation secure`` (a committee, no
single key) is the stronger choice.

Serialization is TenSEAL's own (SEAL's binary format in a protobuf): data,
never pickle. A key is named by its *key id*, the SHA-256 of a domain tag and
the serialized public context: the key holder seals it with each client's
canary key, so a coordinator that swaps the public key is caught.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
import torch

from mpc.errors import MPCError
from mpc.random import SecureRandom

__all__ = [
    "CANARY_KEY_BYTES",
    "CANARY_SLOTS",
    "CANARY_TOLERANCE",
    "PARAMS",
    "SECURITY_BITS",
    "CKKSParams",
    "add_ciphertexts",
    "canaries",
    "chunk_count",
    "client_canary_key",
    "decrypt_sum",
    "encrypt_vector",
    "error_bound",
    "flood",
    "flooding_sigma",
    "gaussian",
    "key_id",
    "load_context",
    "new_context",
    "public_context_bytes",
]

CANARY_SLOTS = 4
CANARY_KEY_BYTES = 32
CANARY_LOW, CANARY_HIGH = 1.0, 256.0  # keyed canaries are uniform in [1, 256)
CANARY_TOLERANCE = 1e-3  # ceiling of the canary check; a wrong sum is off by ~U(0, 255)
SECURITY_BITS = 30  # statistical security of one released decryption (KL ≤ 2^-30)
_UNIT_ROUNDOFF = 2.0**-52  # double precision, as SEAL's decoder computes
_KEY_ID_TAG = b"fedsim/he/key-id\x00"
_CANARY_TAG = b"fedsim/he/canary-key\x00"

Context = Any  # tenseal.Context (no type stubs)


@dataclass(frozen=True, kw_only=True)
class CKKSParams:
    """CKKS parameters; the defaults are the documented choice above."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60, 60)
    scale_bits: int = 70

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def chunk(self) -> int:
        """Values per ciphertext: the slots less the canaries."""
        return self.slots - CANARY_SLOTS

    @property
    def max_abs_sum(self) -> float:
        """Largest |slot| a decrypted sum may hold: q/2 over the scale."""
        return float(2 ** (sum(self.coeff_mod_bit_sizes[:-1]) - 1 - self.scale_bits))

    @property
    def fresh_error_bound(self) -> float:
        """B_fresh: |error| of one fresh public-key encryption, √(N/3)·(6 + 8√N) / Δ."""
        n = self.poly_modulus_degree
        return math.sqrt(n / 3) * (6 + 8 * math.sqrt(n)) / 2.0**self.scale_bits


PARAMS = CKKSParams()


def error_bound(count: int, max_abs: float, params: CKKSParams = PARAMS) -> float:
    """B: |decrypted − encrypted| per value, a sum of ``count`` fresh ciphertexts whose
    largest decrypted |value| is ``max_abs`` (CKKS error + double-precision decode)."""
    n = params.poly_modulus_degree
    return count * params.fresh_error_bound + n * _UNIT_ROUNDOFF * max_abs


def flooding_sigma(length: int, count: int, max_abs: float, params: CKKSParams = PARAMS) -> float:
    """σ = √(d/2)·2^(s/2)·B: KL(released ‖ simulated) ≤ 2^-s for d = ``length`` values."""
    bound = error_bound(count, max_abs, params)
    return math.sqrt(length / 2) * math.pow(2.0, SECURITY_BITS / 2) * bound


def gaussian(rng: SecureRandom, count: int) -> torch.Tensor:
    """``count`` float64 N(0, 1) samples: Box–Muller on 53-bit uniforms from ``rng``."""
    pairs = -(-count // 2)
    if pairs == 0:
        return torch.empty(0, dtype=torch.float64)
    bits = np.frombuffer(rng.random_bytes(16 * pairs), dtype=np.uint64) >> np.uint64(11)
    uniform = torch.from_numpy(bits.astype(np.float64) / 2.0**53).reshape(2, pairs)
    radius = torch.sqrt(-2.0 * torch.log1p(-uniform[0]))  # 1 − u in (0, 1]: log is finite
    angle = 2.0 * math.pi * uniform[1]
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:count]


def flood(
    total: torch.Tensor, count: int, rng: SecureRandom, params: CKKSParams = PARAMS
) -> tuple[torch.Tensor, float]:
    """The decrypted sum of ``count`` ciphertexts as it may leave the key holder, and σ.

    Adds N(0, σ²) to every value with σ = :func:`flooding_sigma` of the
    vector's own length and largest |value|.
    """
    largest = float(total.abs().max()) if total.numel() else 0.0
    sigma = flooding_sigma(total.numel(), count, largest, params)
    return total + sigma * gaussian(rng, total.numel()), sigma


def new_context(params: CKKSParams = PARAMS) -> Context:
    """A fresh CKKS context holding a new key pair (the key holder's); public-key encryption."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.ASYMMETRIC,
    )
    context.global_scale = float(2**params.scale_bits)
    return context


def public_context_bytes(context: Context) -> bytes:
    """Parameters, scale and public key: no secret, relinearization or Galois key.

    With it ciphertexts can be made, loaded and added, not decrypted.
    """
    data: bytes = context.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return data


def key_id(public_context: bytes) -> str:
    """SHA-256 (hex) of a tag and the serialized public context: names the key pair."""
    return hashlib.sha256(_KEY_ID_TAG + public_context).hexdigest()


def client_canary_key(master: bytes, client_id: str) -> bytes:
    """Client ``client_id``'s canary key: HMAC-SHA256 of the session's master canary key."""
    if len(master) != CANARY_KEY_BYTES:
        raise MPCError(f"a master canary key has {CANARY_KEY_BYTES} bytes, got {len(master)}")
    return hmac.digest(master, _CANARY_TAG + client_id.encode(), "sha256")


def canaries(canary_key: bytes, chunks: int) -> torch.Tensor:
    """The keyed canaries of a client's ``chunks`` ciphertexts, (chunks, CANARY_SLOTS)
    float64 in [1, 256): SHAKE-256 of its canary key, 53 random bits per value."""
    if len(canary_key) != CANARY_KEY_BYTES:
        raise MPCError(f"a canary key has {CANARY_KEY_BYTES} bytes, got {len(canary_key)}")
    stream = hashlib.shake_256(_CANARY_TAG + canary_key).digest(8 * chunks * CANARY_SLOTS)
    bits = np.frombuffer(stream, dtype=np.uint64) >> np.uint64(11)
    uniform = torch.from_numpy(bits.astype(np.float64) / 2.0**53)
    return (CANARY_LOW + (CANARY_HIGH - CANARY_LOW) * uniform).reshape(chunks, CANARY_SLOTS)


def load_context(data: bytes, *, secret: bool, params: CKKSParams = PARAMS) -> Context:
    """A context from bytes, checked to have ``params`` and a public key, and (not) to hold
    the secret key."""
    try:
        context = ts.context_from(data)
        first = context.seal_context().data.first_context_data()
        degree = first.parms().poly_modulus_degree()
        data_bits = first.total_coeff_modulus_bit_count()
        scale = context.global_scale
        has_public = context.has_public_key()
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
    if not has_public:
        raise MPCError("the CKKS context holds no public key")
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
    count: int,
    params: CKKSParams = PARAMS,
) -> torch.Tensor:
    """The exact float64 decryption of ``length`` values a sum of ``count`` clients'
    ciphertexts holds — for the key holder only: it leaves only through :func:`flood`.

    ``expected`` is the sum of the canaries of the clients the sum must hold,
    (chunks, CANARY_SLOTS). Every chunk's canaries must decrypt to it within
    the error bound (:func:`error_bound`, at most ``CANARY_TOLERANCE``);
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
        tolerance = min(CANARY_TOLERANCE, error_bound(count, float(plain.abs().max()), params))
        off = float((plain[-CANARY_SLOTS:] - expected[index]).abs().max())
        if not off <= tolerance:  # `not <=` so that NaN fails too
            raise MPCError(
                f"chunk {index}'s canaries are off by {off:.3g}: the sum holds a ciphertext "
                "under another key, a tampered one, or other clients than claimed; not used"
            )
        parts.append(plain[:-CANARY_SLOTS])
    return torch.cat(parts)
