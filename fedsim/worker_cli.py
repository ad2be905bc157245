"""``fedsim worker serve``: start one websocket worker process."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from fl.errors import ConfigError

__all__ = ["parse_partition_slot", "serve_worker"]


def parse_partition_slot(text: str) -> tuple[int, int]:
    """``I/N`` → (I, N) with 0 <= I < N."""
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError(f"--partition {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ConfigError(f"--partition {text!r}: need 0 <= I < N")
    return index, count


def serve_worker(args: argparse.Namespace) -> int:
    """Load the worker's data, then serve until SIGINT/SIGTERM."""
    import torch

    from fl.partition import Partitioning
    from fl.task_data import forget_loaded_data, load_partition
    from fl.task_fingerprint import task_fingerprint
    from fl.tasks import image_task, load_task
    from mpc.protocols import all_steps  # noqa: F401  (registers every protocol's party steps)
    from workers.auth import read_secret
    from workers.cohort import MIN_COHORT
    from workers.core import TRAIN_X_ID, TRAIN_Y_ID
    from workers.lifetime import die_with_parent
    from workers.memory import one_heap, return_free_memory
    from workers.tls import certificate_der, is_loopback_host, server_ssl_context
    from workers.ws_server import ServerConfig, run_worker

    die_with_parent()
    one_heap()  # before the server's threads exist
    if args.threads:
        torch.set_num_threads(args.threads)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
    if args.min_cohort < MIN_COHORT:
        raise ConfigError(f"--min-cohort must be >= {MIN_COHORT}: a sum of one is an update")
    secret = read_secret(args.token_file) if args.token_file else None
    if not is_loopback_host(args.host) and (secret is None or not args.tls_cert):
        raise ConfigError(
            f"--token-file and --tls-cert/--tls-key are required to serve on {args.host} "
            "(not loopback)"
        )
    # The task is loaded here, from this command line, before any request: a request
    # names its model by key and a key that was not loaded is refused (fl.tasks).
    task = load_task(args.task) if args.task else None
    objects: dict[str, object] = {}
    description = fingerprint = ""
    if args.partition:  # a worker that holds data answers what task and data it is
        if task is None:
            task = image_task(args.dataset, "cnn", args.data_dir)
        fingerprint = task_fingerprint(task)
        index, count = parse_partition_slot(args.partition)
        partitioning = Partitioning(
            args.task or args.dataset, args.partitioner, count, args.seed, args.train_samples
        )
        split = load_partition(partitioning, index, data_dir=args.data_dir)
        objects = {TRAIN_X_ID: split.x, TRAIN_Y_ID: split.y}
        forget_loaded_data()  # the split it was cut from
        return_free_memory()
        description = partitioning.describe(index)
    ssl_context = (
        server_ssl_context(args.tls_cert, args.tls_key, args.tls_client_ca)
        if args.tls_cert
        else None
    )
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s fedsim-worker[{args.id}] %(levelname)s %(message)s",
    )
    config = ServerConfig(
        worker_id=args.id,
        host=args.host,
        port=args.port,
        secret=secret,
        ssl_context=ssl_context,
        max_message_bytes=args.max_message_mb * 2**20,
        data_description=description,
        task_fingerprint=fingerprint,
        certificate_der=certificate_der(args.tls_cert) if args.tls_cert else None,
        min_cohort=args.min_cohort,
        peer_secret=read_secret(args.peer_secret_file) if args.peer_secret_file else None,
    )

    def ready(port: int) -> None:
        line = {
            "event": "ready",
            "worker_id": args.id,
            "host": args.host,
            "port": port,
            "tls": ssl_context is not None,
            "mutual_tls": bool(args.tls_client_ca),
            "samples": int(objects[TRAIN_Y_ID].shape[0]) if objects else 0,  # type: ignore[attr-defined]
        }
        print(json.dumps(line), flush=True)

    try:
        run_worker(config, objects, ready)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {args.host}:{args.port}: {exc.strerror}") from None
    return 0
