"""The admission policy of handshakes in progress, without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import workers.peers
from workers.peers import CROWDED, MAX_PENDING_PER_ADDRESS, Admission


class _Connection:
    """What Admission uses of a websockets ServerConnection."""

    def __init__(self, address: str) -> None:
        self.remote_address = (address, 40000)
        self.closed_with: tuple[int, str] | None = None

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)


def _admit_all(admission: Admission, connections: list[Any]) -> None:
    async def admit() -> None:
        for connection in connections:
            admission.admit(connection)
        await asyncio.sleep(0)  # let the drops' close tasks run

    asyncio.run(admit())


def test_a_crowd_on_one_address_only_drops_its_own_oldest() -> None:
    # Prepare
    coordinator = _Connection("10.0.0.1")
    crowd = [_Connection("10.0.0.66") for _ in range(3 * MAX_PENDING_PER_ADDRESS)]
    admission = Admission()

    # Execute
    _admit_all(admission, [coordinator, *crowd])

    # Assert: the coordinator is untouched; the crowd's oldest were closed as crowded.
    assert coordinator.closed_with is None and admission.settle(coordinator)
    assert [c.closed_with for c in crowd[: 2 * MAX_PENDING_PER_ADDRESS]] == [(1013, CROWDED)] * (
        2 * MAX_PENDING_PER_ADDRESS
    )
    assert all(c.closed_with is None for c in crowd[2 * MAX_PENDING_PER_ADDRESS :])


def test_when_full_the_busiest_address_gives_way_and_the_newcomer_is_tracked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: room for three handshakes in all.
    monkeypatch.setattr(workers.peers, "MAX_PENDING_HANDSHAKES", 3)
    busy = [_Connection("10.0.0.7"), _Connection("10.0.0.7")]
    alone = _Connection("10.0.0.8")
    newcomer = _Connection("10.0.0.9")
    admission = Admission()

    # Execute
    _admit_all(admission, [*busy, alone, newcomer])

    # Assert: the busiest address's oldest went; the others, and the newcomer, stay.
    assert busy[0].closed_with == (1013, CROWDED) and not admission.settle(busy[0])
    assert all(admission.settle(c) for c in (busy[1], alone, newcomer))


def test_a_newcomer_whose_address_lost_its_only_handshake_is_still_tracked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: room for one handshake, held by the same address.
    monkeypatch.setattr(workers.peers, "MAX_PENDING_HANDSHAKES", 1)
    first, second, third = (_Connection("10.0.0.5") for _ in range(3))
    admission = Admission()

    # Execute
    _admit_all(admission, [first, second, third])

    # Assert: each newcomer dropped the one before, and the last is admitted.
    assert first.closed_with == second.closed_with == (1013, CROWDED)
    assert third.closed_with is None and admission.settle(third)
