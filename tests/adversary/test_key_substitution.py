"""The coordinator relays session public keys; here it hands a client its own key in
place of every committee member's, to open the client's shares itself.

Workers that share a peer secret (`fedsim worker serve --peer-secret-file`)
tag their session keys with it; the coordinator, which does not hold it,
cannot tag a key of its own.
"""

from __future__ import annotations

import secrets

import torch

from mpc.channel import SessionKey, open_sealed
from mpc.flatten import float_keys
from mpc.random import SecureRandom
from mpc.ring import FixedPointEncoder
from tests.adversary.cheating_coordinator import data_holders, flat, train_round
from workers.errors import RemoteError
from workers.party import tensor_from_bytes

_HEADER = 33  # weighting byte + training digest, before each share's kind byte


def _read_share(payload: bytes, length: int) -> torch.Tensor:
    kind, body = payload[_HEADER : _HEADER + 1], payload[_HEADER + 1 :]
    if kind == b"S":
        return SecureRandom(body).ring_elements((length,))
    return torch.frombuffer(bytearray(body), dtype=torch.int64)


def test_a_substituted_member_key_is_refused_by_the_client() -> None:
    # Prepare: three clients of one federation, which is also the committee.
    template, trained = train_round(data_holders(3, peer_secret=secrets.token_bytes(32)))
    victim, committee = trained[0], [t.worker for t in trained]
    session = f"attack-{secrets.token_hex(4)}"
    published = {w.id: w.party_op("keygen", session=session)["public_key"] for w in committee}
    victim_public = published[victim.worker.id].numpy().tobytes()[:32]
    attacker = SessionKey.generate()
    length = len(flat(template, template)) + 1

    # Execute: the victim is given the attacker's key for every member.
    recovered = None
    try:
        reply = victim.worker.party_op(
            "secagg.share",
            session=session,
            state_id=victim.state_id,
            weighting="samples",
            keys=float_keys(template),
            clients=3,
            committee=[m.id for m in committee],
            public_keys=[tensor_from_bytes(attacker.public_bytes)] * 3,
            lead=0,
            fractional_bits=16,
        )
        shares = [
            _read_share(
                open_sealed(
                    attacker,
                    victim_public,
                    sealed.numpy().tobytes(),
                    session=session,
                    sender=victim.worker.id,
                    recipient=member.id,
                    label="secagg/share",
                ),
                length,
            )
            for member, sealed in zip(committee, reply["ciphertexts"], strict=True)
        ]
        recovered = FixedPointEncoder().decode(sum(shares))[:-1] / victim.samples
    except RemoteError as exc:
        refusal = str(exc)

    # Assert: the victim refuses to seal anything for a key no member vouched for.
    truth = flat(victim.truth, template)
    assert recovered is None or (recovered - truth).abs().le(2.0**-16).double().mean() < 0.01
    assert "not vouched for by the workers' peer secret" in refusal
