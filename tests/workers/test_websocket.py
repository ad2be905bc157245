"""Real websocket worker processes on loopback: same protocol, same results, authenticated."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fl.models import build_model, get_state, set_state
from fl.partition import Partitioning
from fl.task_data import load_partition
from fl.training import TrainConfig, train_local
from tests.workers.running import HOST, RunningWorker, client_for, start_worker, stop_worker
from workers.auth import read_secret, write_secret
from workers.core import TRAIN_X_ID, TRAIN_Y_ID
from workers.errors import RemoteError, WorkerError
from workers.messages import AuthResult, ErrorReply, Ping, decode_message
from workers.plan import trace_plan
from workers.pointer import Pointer
from workers.tls import make_worker_pki
from workers.ws_client import WebsocketWorker

pytestmark = pytest.mark.e2e  # real worker processes

TLS_HOST = "127.0.0.2"  # a distinct loopback address, as a remote host would be


@pytest.fixture(scope="module")
def plain_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    worker = start_worker(tmp_path_factory.mktemp("ws"), "ws-0", HOST, tls=False)
    yield worker
    stop_worker(worker)


@pytest.fixture(scope="module")
def tls_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    worker = start_worker(tmp_path_factory.mktemp("wss"), "wss-0", TLS_HOST, tls=True)
    yield worker
    stop_worker(worker)


def test_pointers_and_plans_over_websocket(plain_worker: RunningWorker) -> None:
    # Prepare
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    w = torch.randn(3, 2, generator=torch.Generator().manual_seed(2))
    plan = trace_plan(lambda a, b: torch.relu(a @ b).sum(), 2)

    # Execute
    with client_for(plain_worker, "ws-0") as worker:
        px, pw = worker.send(x), worker.send(w)
        remote = ((px @ pw) * 2 - 1).get()
        stored = worker.send_plan(plan)
        runs = [worker.run_plan(stored, px, pw)[0].get() for _ in range(3)]

    # Assert
    assert torch.equal(remote, (x @ w) * 2 - 1)
    expected = torch.relu(x @ w).sum()
    assert all(torch.equal(out, expected) for out in runs)


def test_remote_training_equals_local_training(tls_worker: RunningWorker) -> None:
    # Prepare: the worker loaded partition 0/2 of the first 400 samples itself.
    data = load_partition(Partitioning("fashion-mnist", "iid", 2, 0, 400), 0)
    start = get_state(build_model("mlp", seed=0))
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05)

    # Execute
    with client_for(tls_worker, "wss-0") as worker:
        new_ptr, reply = worker.train("mlp", worker.send(start), config, seed=7)
        remote_state = new_ptr.get()
    local = build_model("mlp")
    set_state(local, start)
    train_local(local, data, config, torch.Generator().manual_seed(7))

    # Assert: same bits (one torch thread on both sides for this small MLP).
    assert reply.num_samples == len(data)
    for key, value in get_state(local).items():
        assert torch.allclose(remote_state[key], value, atol=1e-6), key


@pytest.mark.parametrize(
    ("secret", "use_ca", "fragment"),
    [
        (b"x" * 64, True, "wrong secret"),
        (None, False, "CERTIFICATE_VERIFY_FAILED"),
    ],
)
def test_authentication_refusals(
    tls_worker: RunningWorker, secret: bytes | None, use_ca: bool, fragment: str
) -> None:
    # Execute
    with pytest.raises(WorkerError) as refused:
        WebsocketWorker(
            "wss-0",
            tls_worker.url,
            secret=secret or read_secret(tls_worker.token),
            cafile=tls_worker.ca if use_ca else None,
        )

    # Assert: refused at the handshake, and the worker says why in its log.
    assert fragment in str(refused.value)
    if secret is not None:
        time.sleep(0.2)
        assert "wrong secret" in tls_worker.log.read_text()


def test_plain_websocket_to_a_tls_worker_is_refused(tls_worker: RunningWorker) -> None:
    with pytest.raises(WorkerError):
        WebsocketWorker(
            "wss-0",
            tls_worker.url.replace("wss://", "ws://"),
            secret=read_secret(tls_worker.token),
            connect_timeout=5,
        )


def test_request_before_authentication_is_refused_and_logged(plain_worker: RunningWorker) -> None:
    # Execute: skip the handshake and send a request straight away.
    with connect(plain_worker.url, compression=None, proxy=None) as raw:
        raw.recv(timeout=10)  # the challenge
        raw.send(Ping().encode())
        answer = decode_message(raw.recv(timeout=10))

    # Assert
    assert isinstance(answer, AuthResult) and not answer.ok
    assert "before authentication" in answer.reason
    time.sleep(0.2)
    assert "before authentication" in plain_worker.log.read_text()


def test_bad_frames_get_error_replies_and_objects_survive(plain_worker: RunningWorker) -> None:
    # Prepare
    rng = random.Random(0)
    kept = torch.arange(10.0)
    with client_for(plain_worker, "ws-0") as worker:
        pointer = worker.send(kept)
        good = Ping().encode()
        frames = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))) for _ in range(200)]
        frames += [bytes(b ^ 0xFF if rng.random() < 0.05 else b for b in good) for _ in range(100)]
        frames += [b"\x80\x04\x95" + b"pickle" * 10, b"FSM1" + b"\xff" * 8]

        # Execute: each frame straight onto the authenticated socket.
        replies = [decode_message(worker._roundtrip(frame)) for frame in frames]

        # Assert: an answer for every frame; the worker still serves and trains.
        assert all(isinstance(r, ErrorReply) or r.TAG == "pong" for r in replies)
        assert torch.equal(pointer.get(), kept)
        start = worker.send(get_state(build_model("mlp", seed=0)))
        _, reply = worker.train("mlp", start, TrainConfig(epochs=1, batch_size=32, lr=0.05), seed=1)
        assert reply.num_samples == 200
        with pytest.raises(RemoteError):
            worker.get("no-such-object")


def test_second_coordinator_is_refused_while_one_is_connected(plain_worker: RunningWorker) -> None:
    with client_for(plain_worker, "ws-0"), pytest.raises(WorkerError):
        client_for(plain_worker, "ws-0")


def test_worker_refuses_to_serve_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "worker", "serve", "--id", "w", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "fedsim: error: --token-file and --tls-cert/--tls-key are required to serve on "
        "0.0.0.0 (not loopback)"
    ]


def _mutations(rng: random.Random, frames: list[bytes], count: int) -> Iterator[bytes]:
    """Random bytes, bit flips, truncations and splices of valid frames."""
    for number in range(count):
        base = frames[number % len(frames)]
        kind = number % 4
        if kind == 0:
            yield rng.randbytes(rng.randint(0, 256))
        elif kind == 1:
            data = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            yield bytes(data)
        elif kind == 2:
            yield base[: rng.randrange(len(base))]
        else:
            cut = rng.randrange(len(base))
            yield base[:cut] + rng.randbytes(rng.randint(1, 32)) + base[cut:]


def test_fuzz_ten_thousand_bad_frames(plain_worker: RunningWorker) -> None:
    # Prepare: valid frames of several kinds to mutate; an object to protect.
    from workers.messages import GetObject, PutObject, RunOp, Train

    rng = random.Random(1234)
    seeds = [
        PutObject("fuzz:a", torch.arange(12.0).reshape(3, 4)).encode(),
        GetObject("fuzz:a", False).encode(),
        RunOp("add", (1.0, 2.0), {}, "fuzz:r").encode(),
        Train("mlp", "s", "x", "y", {"epochs": 1}, 3, "fuzz:t").encode(),
        Ping().encode(),
    ]
    kept = torch.randn(5, 5, generator=torch.Generator().manual_seed(3))

    with client_for(plain_worker, "ws-0") as worker:
        pointer = worker.send(kept)
        before = worker.ping().num_objects

        # Execute
        answered = 0
        for frame in _mutations(rng, seeds, 10_000):
            decode_message(worker._roundtrip(frame))  # every frame gets a decodable reply
            answered += 1

        # Assert: nothing lost, nothing crashed, training still exact.
        assert answered == 10_000
        assert torch.equal(worker.get(pointer, delete=False), kept)
        # Mutations may have created objects (a valid Put survived); none was lost.
        assert worker.ping().num_objects >= before
        start = worker.send(get_state(build_model("mlp", seed=0)))
        _, reply = worker.train("mlp", start, TrainConfig(epochs=1, batch_size=32, lr=0.05), seed=1)
        assert reply.num_samples == 200 and reply.mean_loss > 0
    assert plain_worker.process.poll() is None


def test_an_oversized_request_is_refused_before_it_is_sent_and_objects_stay(
    tmp_path: Path,
) -> None:
    # Prepare: a worker that accepts frames of at most 1 MiB, holding an object.
    token = tmp_path / "token"
    write_secret(token)
    command = [sys.executable, "-m", "fedsim", "worker", "serve", "--id", "small", "--port", "0"]
    command += ["--token-file", str(token), "--max-message-mb", "1"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        url = f"ws://{HOST}:{json.loads(process.stdout.readline())['port']}"
        with WebsocketWorker("small", url, secret=read_secret(token), timeout=30) as worker:
            kept = worker.send(torch.arange(5.0))

            # Execute: 2 MiB of float32.
            with pytest.raises(WorkerError, match="exceeds the worker's frame limit"):
                worker.send(torch.zeros(2**19))

            # Assert: the connection and the object on it are still there.
            assert torch.equal(kept.get(), torch.arange(5.0))
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    # Prepare: a worker on 127.0.0.3 presenting a valid certificate made for 127.0.0.9.
    pki = make_worker_pki(tmp_path / "pki", ["127.0.0.9"])
    token = tmp_path / "token"
    write_secret(token)
    command = [sys.executable, "-m", "fedsim", "worker", "serve", "--id", "w", "--port", "0"]
    command += ["--host", "127.0.0.3", "--token-file", str(token)]
    command += ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        port = json.loads(process.stdout.readline())["port"]

        # Execute / Assert: the reason given is the certificate's, not mutual TLS.
        with pytest.raises(
            WorkerError, match=r"IP address mismatch|doesn.t match|hostname"
        ) as caught:
            WebsocketWorker(
                "w", f"wss://127.0.0.3:{port}", secret=read_secret(token), cafile=pki.ca_cert
            )
        assert "mutual TLS" not in str(caught.value)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_each_connection_has_its_own_objects_and_private_data(plain_worker: RunningWorker) -> None:
    # Prepare
    with client_for(plain_worker, "ws-0") as first:
        pointer_id = first.send(torch.ones(2), obj_id="mine", owned=False).id

    # Execute / Assert: a new connection sees neither the old objects nor raw data.
    with client_for(plain_worker, "ws-0") as second:
        with pytest.raises(RemoteError, match="not_found"):
            second.get(pointer_id)
        for private in (TRAIN_X_ID, TRAIN_Y_ID):
            with pytest.raises(RemoteError, match="own data"):
                second.get(private, delete=False)
        with pytest.raises(RemoteError, match="own data"):
            second.run_op("sum", Pointer(second, TRAIN_X_ID, owned=False))
        second.delete([TRAIN_X_ID])  # ignored: the data stays
        start = second.send(get_state(build_model("mlp", seed=0)))
        _, reply = second.train("mlp", start, TrainConfig(epochs=1, batch_size=32, lr=0.05), seed=1)
        assert reply.num_samples == 200


def test_unauthenticated_peers_cannot_make_the_worker_buffer_or_lock_it(
    plain_worker: RunningWorker,
) -> None:
    # Execute: a 1 MiB first frame, garbage first frames, and silent peers.
    with connect(plain_worker.url, compression=None, proxy=None, max_size=None) as raw:
        raw.recv(timeout=10)
        raw.send(b"\x00" * 2**20)
        with pytest.raises(ConnectionClosed) as closed:
            raw.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    rng = random.Random(7)
    for _ in range(50):
        with connect(plain_worker.url, compression=None, proxy=None) as raw:
            raw.recv(timeout=10)
            raw.send(rng.randbytes(rng.randint(0, 512)))
            answer = decode_message(raw.recv(timeout=10))
            assert isinstance(answer, AuthResult) and not answer.ok
    silent = [connect(plain_worker.url, compression=None, proxy=None) for _ in range(3)]

    # Assert: the coordinator still gets in while strangers hold connections open.
    try:
        with client_for(plain_worker, "ws-0") as worker:
            assert worker.ping().worker_id == "ws-0"
    finally:
        for connection in silent:
            connection.close()
    assert plain_worker.process.poll() is None
