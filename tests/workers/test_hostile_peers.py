"""A worker process against hostile peers on loopback: what each attack gets.

Each test plays one attacker the issue tracker caught getting through, and
asserts on what it obtained: bytes buffered before authentication, a handler
crashed, the coordinator locked out, an object stored under an error reply.
Attackers connect from 127.0.0.3 and up, as a peer on another host would; the
coordinator from 127.0.0.1.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import psutil
import pytest
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.workers.running import HOST, RunningWorker, client_for, start_worker, stop_worker
from workers.codec import MAGIC
from workers.errors import WorkerError
from workers.messages import AuthResult, ErrorReply, decode_message
from workers.peers import PEER_LOG_BURST

pytestmark = pytest.mark.e2e  # a real worker process under hostile peers


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    running = start_worker(tmp_path_factory.mktemp("hostile"), "ws-0", HOST, tls=False)
    yield running
    stop_worker(running)


def _port(worker: RunningWorker) -> int:
    return int(worker.url.rsplit(":", 1)[1])


def _raw_frame(header: str) -> bytes:
    """A fedsim frame with a hand-written JSON header and no tensors."""
    text = header.encode()
    return struct.pack("<4sI", MAGIC, len(text)) + text


def _masked(payload_length: int, payload: bytes) -> bytes:
    """A client's binary websocket frame announcing ``payload_length`` bytes."""
    mask = os.urandom(4)
    head = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", payload_length) + mask
    return head + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _log_when_it_says(worker: RunningWorker, text: str) -> str:
    """The worker's log once it holds ``text`` (the worker writes it after closing)."""
    deadline = time.monotonic() + 30
    while text not in (log := worker.log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the worker sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_frame_sent_with_the_upgrade_request_is_held_to_the_pre_auth_limit(
    worker: RunningWorker,
) -> None:
    # Prepare: the upgrade request and the header of a 64 MiB frame in one write.
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET / HTTP/1.1\r\nHost: {HOST}:{_port(worker)}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    packed = request + _masked(64 * 2**20, b"\x00" * 1024)

    # Execute
    with socket.create_connection((HOST, _port(worker)), timeout=30) as sock:
        sock.sendall(packed)
        received = _read_until_closed(sock)

    # Assert: the frame was refused as too big while the upgrade was read, so
    # the worker never went on to authenticate a peer with 64 MiB pending (it
    # would have sent its challenge, then refused after the auth deadline).
    assert b"auth_challenge" not in received, received
    assert "opening handshake failed" in _log_when_it_says(worker, "opening handshake failed")
    assert "Traceback" not in worker.log.read_text()


@pytest.mark.parametrize(
    ("header", "what"),
    [
        (
            '{"tag":"eval_reply","value":{"map":{"loss":1%s,"accuracy":0.5,"num_samples":3}},'
            '"tensors":[]}' % ("0" * 400),
            "a loss of 10**400",
        ),
        (
            '{"tag":"put","value":{"map":{"obj_id":"x","value":{"tensor":0}}},'
            '"tensors":[{"dtype":"float32","shape":[0,' + str(2**63) + '],"offset":0,"nbytes":0}]}',
            "a tensor of shape [0, 2**63]",
        ),
        (
            '{"tag":"auth_response","value":{"map":{"client_nonce":"\\ud800","proof":"00"}},'
            '"tensors":[]}',
            "a lone surrogate",
        ),
    ],
)
def test_pre_auth_frames_that_crashed_the_handler_are_refused(
    worker: RunningWorker, header: str, what: str
) -> None:
    # Execute
    with connect(worker.url, compression=None, proxy=None) as raw:
        raw.recv(timeout=10)  # the challenge
        raw.send(_raw_frame(header))
        answer = decode_message(raw.recv(timeout=10))
        with pytest.raises(ConnectionClosed) as closed:
            raw.recv(timeout=10)

    # Assert: a refusal and a policy close (1008), not an internal error (1011).
    assert isinstance(answer, AuthResult) and not answer.ok, what
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008, what
    assert "Traceback" not in worker.log.read_text()


def test_a_put_answered_with_an_error_stores_nothing(worker: RunningWorker) -> None:
    # Prepare: an id no reply can carry back (a lone surrogate).
    put = '{"tag":"put","value":{"map":{"obj_id":"x\\ud800","value":1.0}},"tensors":[]}'

    with client_for(worker, "ws-0") as client:
        before = client.ping().num_objects

        # Execute
        answer = decode_message(client._roundtrip(_raw_frame(put)))

        # Assert: an error, and nothing stored under it.
        assert isinstance(answer, ErrorReply), answer
        assert client.ping().num_objects == before


def _silent_crowd(url: str, sources: list[str], stop: threading.Event) -> list[threading.Thread]:
    """Peers that connect, never answer the challenge, and reconnect when dropped."""

    def loiter(source: str) -> None:
        while not stop.is_set():
            try:
                with connect(
                    url, compression=None, proxy=None, source_address=(source, 0), open_timeout=10
                ) as raw:
                    while not stop.is_set():
                        raw.recv(timeout=0.5)
            except (ConnectionClosed, OSError):
                continue
            except TimeoutError:
                continue

    threads = [threading.Thread(target=loiter, args=(s,), daemon=True) for s in sources]
    for thread in threads:
        thread.start()
    return threads


def test_a_crowd_of_silent_peers_cannot_lock_the_coordinator_out(worker: RunningWorker) -> None:
    # Prepare: 24 silent peers from three other addresses, re-opening when dropped.
    stop = threading.Event()
    sources = [f"127.0.0.{3 + i % 3}" for i in range(24)]
    crowd = _silent_crowd(worker.url, sources, stop)
    time.sleep(2)  # let them fill every pending slot

    # Execute: the coordinator connects, authenticates and pings, 20 times.
    answered, refused = 0, []
    try:
        for _ in range(20):
            try:
                with client_for(worker, "ws-0") as client:
                    answered += client.ping().worker_id == "ws-0"
            except WorkerError as error:
                refused.append(str(error))
    finally:
        stop.set()
        for thread in crowd:
            thread.join(timeout=30)

    # Assert
    assert refused == [] and answered == 20
    assert "Traceback" not in worker.log.read_text()


def test_what_a_connection_made_the_worker_hold_is_returned_when_it_closes(
    worker: RunningWorker,
) -> None:
    # Prepare: the worker's resident size after a first, empty connection.
    process = psutil.Process(worker.process.pid)
    with client_for(worker, "ws-0") as client:
        client.ping()
    before = _settled_rss(process, above=None)

    # Execute: a connection that makes it hold 240 MB in 4 MB objects, then ends.
    with client_for(worker, "ws-0") as client:
        for index in range(60):
            client.send(torch.ones(2**20 + index), obj_id=f"big:{index}", owned=False)
        held = process.memory_info().rss

    # Assert: held while connected, given back after.
    assert held - before > 200 * 2**20
    assert _settled_rss(process, above=before + 64 * 2**20) < before + 64 * 2**20


def _settled_rss(process: psutil.Process, *, above: int | None) -> int:
    """The resident size once the worker has finished with the last connection: below
    ``above``, or (``above=None``) steady within 1 MB for half a second; bounded."""
    deadline = time.monotonic() + 30
    rss, steady_since = process.memory_info().rss, time.monotonic()
    while time.monotonic() < deadline:
        if above is not None and rss < above:
            break
        if above is None and time.monotonic() - steady_since >= 0.5:
            break
        time.sleep(0.1)
        now = process.memory_info().rss
        if abs(now - rss) > 2**20:
            steady_since = time.monotonic()
        rss = now
    return rss


def test_a_flood_of_refusals_is_logged_within_a_quota(worker: RunningWorker) -> None:
    # Prepare
    def peer_lines() -> int:
        return sum(
            " refused " in line or " dropped " in line or "handshake failed" in line
            for line in worker.log.read_text().splitlines()
        )

    before = peer_lines()

    # Execute: 300 strangers, each sending garbage as its first frame.
    for number in range(300):
        with connect(worker.url, compression=None, proxy=None) as raw:
            raw.recv(timeout=10)
            raw.send(number.to_bytes(4, "big") * 8)
            with pytest.raises(ConnectionClosed):
                while True:
                    raw.recv(timeout=10)

    # Assert: at most two windows' worth of lines reached the log, not 300.
    assert peer_lines() - before <= 2 * PEER_LOG_BURST
