"""The soak's hostile unauthenticated peers, and the hostile frames they send
(the coordinator's bursts send them too, on its authenticated connection).

``run_hostile_in_child`` is the body of the child process that soak.py starts
with multiprocessing "spawn": the child imports it from this module by name.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import socket
import struct
import threading
import time
from typing import Any

import torch
from soak_tally import Tally

from workers.codec import MAGIC
from workers.errors import ProtocolError
from workers.messages import (
    AuthChallenge,
    AuthResponse,
    AuthResult,
    DeleteObjects,
    GetObject,
    Ping,
    PutObject,
    RunOp,
    Train,
    decode_message,
)

HOST = "127.0.0.1"  # where the worker under test listens
HOSTILE_SOURCES = tuple(f"127.0.0.{i}" for i in range(3, 7))
WORKER_ID = "soak-0"
# Pre-authentication attacks and their weights in each peer's rotation.
PRE_AUTH_KINDS = (
    ("random bytes", 5),
    ("mutated frame", 6),
    ("hostile header", 3),
    ("text frame", 1),
    ("64 KiB frame", 2),
    ("packed: small frame", 2),
    ("packed: 64 KiB frame", 1),
    ("packed: 64 MiB announced", 1),
)
SILENT = "silent peer"
_MAX_SERVER_FRAMES = 8  # a refused stranger gets a challenge, a refusal and a close


# ------------------------------------------------------------------ frames


def _raw_frame(header: str) -> bytes:
    """A fedsim frame with a hand-written JSON header and no tensors."""
    text = header.encode("utf-8", "surrogatepass")
    return struct.pack("<4sI", MAGIC, len(text)) + text


def hostile_headers() -> list[bytes]:
    """Frames whose headers once crashed a handler, or might: each within 4 KiB."""
    big = str(2**63)
    headers = [
        '{"tag":"eval_reply","value":{"map":{"loss":1%s,"accuracy":0.5,"num_samples":3}},'
        '"tensors":[]}' % ("0" * 400),
        '{"tag":"put","value":{"map":{"obj_id":"x","value":{"tensor":0}}},'
        '"tensors":[{"dtype":"float32","shape":[0,' + big + '],"offset":0,"nbytes":0}]}',
        '{"tag":"put","value":{"map":{"obj_id":"x","value":{"tensor":0}}},'
        '"tensors":[{"dtype":"float32","shape":[' + big + "," + big + '],"offset":0,"nbytes":0}]}',
        '{"tag":"put","value":{"map":{"obj_id":"x","value":{"tensor":0}}},'
        '"tensors":[{"dtype":"float32","shape":[-1],"offset":-8,"nbytes":' + str(2**64) + "}]}",
        '{"tag":"auth_response","value":{"map":{"client_nonce":"\\ud800","proof":"00"}},'
        '"tensors":[]}',
        '{"tag":"auth_response","value":{"map":{"client_nonce":' + str(2**64) + ',"proof":"00"}},'
        '"tensors":[]}',
        '{"tag":"auth_response","value":{"map":{"client_nonce":"' + "ab" * 1000 + '",'
        '"proof":"zz"}},"tensors":[]}',
        '{"tag":"put","value":{"map":{"obj_id":"x\\ud800","value":1.0}},"tensors":[]}',
        '{"tag":"put","value":{"map":{"obj_id":"\\udfff","value":"\\ud800\\udc00\\ud800"}},'
        '"tensors":[]}',
        '{"tag":"train","value":{"map":{"model":"mlp","state_id":"s","x_id":"x","y_id":"y",'
        '"config":{"map":{"epochs":' + str(2**70) + '}},"seed":-' + str(2**65) + ","
        '"result_id":"r","sealed":false}},"tensors":[]}',
        '{"tag":"delete","value":{"map":{"obj_ids":[' + ",".join([big] * 50) + ']}},"tensors":[]}',
        '{"tag":"run_op","value":{"map":{"op":"add","args":[' + str(2**70) + ",1e308,1e308],"
        '"kwargs":{"map":{"alpha":' + str(2**64) + '}},"result_id":"r"}},"tensors":[]}',
        '{"tag":"run_op","value":{"map":{"op":"__import__","args":[' + "[" * 40 + "]" * 40 + "],"
        '"kwargs":{"map":{}},"result_id":"r"}},"tensors":[]}',
        '{"tag":"ping","value":' + "[" * 1500 + "]" * 1500 + ',"tensors":[]}',
        '{"tag":"ping","value":{"map":{}},"tensors":[],"tag":"ping"}',
        '{"tag":7,"value":{"map":{}},"tensors":{}}',
        '{"tag":"ping","value":{"map":{"x":NaN,"y":-Infinity}},"tensors":[]}',
        '{"tag":"put","value":{"map":{"obj_id":"n","value":1' + "9" * 4000 + '}},"tensors":[]}',
    ]
    frames = [_raw_frame(h) for h in headers]
    frames.append(struct.pack("<4sI", MAGIC, 0xFFFFFFFF) + b"{}")  # a 4 GiB header announced
    frames.append(struct.pack("<4sI", MAGIC, 2) + b"{}" + b"\x00" * 64)
    frames.append(b"\x80\x04\x95" + b"pickle" * 10)  # pickles are refused unread
    return frames


def seed_frames() -> list[bytes]:
    """Valid frames of many kinds, to mutate."""
    nonce = os.urandom(32).hex()
    return [
        AuthResponse(nonce, os.urandom(32).hex()).encode(),
        AuthChallenge(WORKER_ID, nonce, 4).encode(),
        AuthResult(True, os.urandom(32).hex(), "", 2**28).encode(),
        PutObject("fuzz:a", torch.arange(12.0).reshape(3, 4)).encode(),
        GetObject("fuzz:a", False).encode(),
        RunOp("add", (1.0, 2.0), {}, "fuzz:r").encode(),
        Train("mlp", "s", "x", "y", {"epochs": 1}, 3, "fuzz:t").encode(),
        DeleteObjects(("fuzz:a", "fuzz:r")).encode(),
        Ping().encode(),
    ]


def mutation(rng: random.Random, frames: list[bytes]) -> bytes:
    """Random bytes, bit flips, truncations and splices of valid frames
    (as ``_mutations`` in tests/workers/test_websocket.py)."""
    base = rng.choice(frames)
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randint(0, 256))
    if kind == 1:
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if kind == 2:
        return base[: rng.randrange(len(base))]
    cut = rng.randrange(len(base))
    return base[:cut] + rng.randbytes(rng.randint(1, 32)) + base[cut:]


# ------------------------------------------------------------------ one hostile connection


class _Raw:
    """Just enough of a websocket client over a raw socket to misbehave precisely."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline
        self.buffer = b""

    def _fill(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buffer += chunk

    def until_eof(self) -> None:
        """Wait for the worker to close the connection (after a close frame, it should)."""
        with contextlib.suppress(EOFError, ConnectionResetError):
            while True:
                self._fill()
                self.buffer = b""

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def http_status(self) -> int:
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > 16384:
                raise ProtocolError("endless HTTP response")
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return int(head.split(b" ", 2)[1])

    def read_frame(self) -> tuple[int, bytes]:
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", self._take(8))
        if length > 2**20:
            raise ProtocolError(f"the worker sent a frame of {length} bytes")
        return first & 0x0F, self._take(length)

    def send_frame(self, payload: bytes, opcode: int = 2) -> None:
        self.sock.sendall(_masked(payload, opcode))


def _masked(payload: bytes, opcode: int = 2, announced: int | None = None) -> bytes:
    """A client's websocket frame (FIN set, masked); ``announced`` overrides its length."""
    length = len(payload) if announced is None else announced
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    elif length < 2**16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", length)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", length)
    mask = os.urandom(4)
    if not payload:
        return head + mask
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    body = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return head + mask + body.to_bytes(len(payload), "little")


def _upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _pre_auth_payload(
    kind: str, rng: random.Random, seeds: list[bytes], headers: list[bytes]
) -> tuple[bytes, int, int | None]:
    """The first frame of an attack: payload, opcode, and a length to announce instead."""
    if kind == "random bytes":
        return rng.randbytes(rng.randint(0, 512)), 2, None
    if kind == "mutated frame":
        return mutation(rng, seeds), 2, None
    if kind == "hostile header":
        return rng.choice(headers), 2, None
    if kind == "text frame":
        return bytes(rng.choice(b'abcdef{}[]:," ') for _ in range(rng.randint(0, 256))), 1, None
    if kind in ("64 KiB frame", "packed: 64 KiB frame"):
        return rng.randbytes(2**16), 2, None
    if kind == "packed: small frame":
        return rng.choice([mutation(rng, seeds), rng.choice(headers)]), 2, None
    if kind == "packed: 64 MiB announced":
        return b"\x00" * 1024, 2, 64 * 2**20
    raise ValueError(kind)


def _connect(source: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection from ``source`` to the worker.

    The port is picked at connect time (IP_BIND_ADDRESS_NO_PORT), not by bind,
    so that a peer's earlier connections in TIME_WAIT do not run a source
    address out of ports over a long soak.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect((HOST, port))
    except BaseException:
        sock.close()
        raise
    return sock


def pre_auth_attack(
    port: int, source: str, kind: str, payload: bytes, opcode: int, announced: int | None,
    timeout: float,
) -> tuple[int, str]:  # fmt: skip
    """One hostile connection: (frames sent, how the worker answered).

    Every socket operation, and the whole attack, is bounded by ``timeout``: an
    attack that hits it is a hang (its answer holds "timeout").
    """
    frames, seen = 0, []
    packed = kind.startswith("packed")
    status = 0
    try:
        with _connect(source, port, timeout) as sock:
            raw = _Raw(sock, time.monotonic() + timeout)
            request = _upgrade_request(port)
            if packed:
                sock.sendall(request + _masked(payload, opcode, announced))
                frames = 1
            else:
                sock.sendall(request)
            status = raw.http_status()
            if status != 101:
                return frames, f"http {status}"
            # Unless packed into the upgrade or silent, the attack's frame answers the challenge.
            first = payload if kind != SILENT and not packed else None
            for _ in range(_MAX_SERVER_FRAMES):
                code, data = raw.read_frame()
                if code == 8:  # close: answer it, then wait for the worker to close TCP
                    close = struct.unpack(">H", data[:2])[0] if len(data) >= 2 else 1005
                    seen.append(f"close {close}")
                    with contextlib.suppress(OSError):
                        raw.send_frame(data[:2], opcode=8)
                    raw.until_eof()
                    break
                if _answer_frame(raw, code, data, first, opcode, seen):
                    frames = 1
            else:
                seen.append("too many frames")
    except TimeoutError:
        seen.append("timeout")
    except (ConnectionResetError, BrokenPipeError):
        seen.append("reset")
    except EOFError:
        seen.append("eof" if status else "eof before the upgrade")
    except ProtocolError as exc:
        seen.append(f"undecodable answer ({exc})")
    except OSError as exc:
        seen.append(f"{type(exc).__name__} {exc.errno}")
    return frames, " + ".join(seen) or "nothing"


def _answer_frame(
    raw: _Raw, code: int, data: bytes, first: bytes | None, opcode: int, seen: list[str]
) -> bool:
    """Answer one frame of the worker's other than a close; True if ``first`` was sent."""
    if code == 9:  # keepalive ping
        raw.send_frame(data, opcode=10)
        return False
    message = decode_message(data) if code == 2 else None
    if isinstance(message, AuthChallenge):
        if first is not None:
            raw.send_frame(first, opcode)
            return True
    elif isinstance(message, AuthResult):
        seen.append("refusal" if not message.ok else "ACCEPTED")
    else:
        seen.append(f"opcode {code} {getattr(message, 'TAG', '')}".strip())
    return False


# ------------------------------------------------------------------ all the hostile peers


def run_hostile(
    stop: Any, port: int, seconds: float, threads_per_source: int, silent_per_source: int,
    silent_pause: float, timeout: float, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """All hostile unauthenticated peers, for ``seconds`` or until ``stop`` is set."""
    deadline = time.monotonic() + seconds
    tally = Tally()
    seeds, headers = seed_frames(), hostile_headers()
    kinds = [kind for kind, weight in PRE_AUTH_KINDS for _ in range(weight)]

    def running() -> bool:
        return time.monotonic() < deadline and not stop.is_set()

    def attacker(source: str, number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        while running():
            kind = rng.choice(kinds)
            payload, opcode, announced = _pre_auth_payload(kind, rng, seeds, headers)
            began = time.monotonic()
            frames, answer = pre_auth_attack(
                port, source, kind, payload, opcode, announced, timeout
            )
            tally.add("pre-auth", kind, frames, answer, time.monotonic() - began)

    def loiterer(source: str) -> None:
        while running():
            began = time.monotonic()
            frames, answer = pre_auth_attack(port, source, SILENT, b"", 2, None, timeout)
            tally.add("pre-auth", SILENT, frames, answer, time.monotonic() - began)
            stop.wait(silent_pause)

    workers: list[threading.Thread] = []
    for index, source in enumerate(HOSTILE_SOURCES):
        for t in range(threads_per_source):
            number = index * threads_per_source + t
            workers.append(threading.Thread(target=attacker, args=(source, number), daemon=True))
        for _ in range(silent_per_source):
            workers.append(threading.Thread(target=loiterer, args=(source,), daemon=True))
    for thread in workers:
        thread.start()
    try:
        while running():
            stop.wait(0.2)
    finally:
        stop.set()  # also when interrupted: every peer ends its current attack and returns
        join_all(workers, timeout + 5)
        stuck = sum(thread.is_alive() for thread in workers)
        if stuck:
            tally.note(f"{stuck} hostile threads still running at the end")
    return tally.as_dict()


def join_all(threads: list[threading.Thread], seconds: float) -> None:
    """Join every thread, all within ``seconds`` in total."""
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(timeout=max(deadline - time.monotonic(), 0))


def run_hostile_in_child(queue: Any, stop: Any, *args: Any) -> None:
    """The child process's body: run_hostile, its tally back through ``queue``."""
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole process group
        queue.put(run_hostile(stop, *args))
