"""The graph-engine entry point: one DeepGNN server holding its share of a graph's partitions.

`python -m graph_engine.server --data-dir URI --port N --ordinal I --replicas S --partitions P`
serves partitions I, I+S, ... < P (DeepGNN's `--server_group I,S,P`). Pods and the local
provisioner run this same module. Unlike `deepgnn.graph_engine.snark.server` it exits cleanly on
SIGTERM (the server is reset and downloaded partitions removed) instead of sleeping forever, and it
checks every file it loads against the manifest's size and SHA-256 first, refusing a truncated or
corrupt partition (the port never opens, so readiness fails and the connector reports the log line).

`--port 0 --port-file F` takes any free port: the server holds it from the start (before loading,
which can take minutes) and writes it to F, so nothing else can take it between the choice and the
bind, as a port picked by the caller long before the server binds could be (the local provisioner).
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

from graph_engine import store
from infra.contract import SERVER_ARGS, assign_partitions

log = logging.getLogger("graph_engine.server")


@dataclass(frozen=True)
class ServerArgs:
    data_dir: str
    port: int
    ordinal: int
    replicas: int
    partitions: int
    host: str
    storage: str = "memory"       # --storage (DataServiceConfig.args): DeepGNN's PartitionStorageType
    skip_temporal: bool = False   # --skip-temporal: DeepGNN's skip_temporal_loading
    port_file: str | None = None  # --port-file: where the port it holds is written

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def my_partitions(self) -> list[int]:
        return assign_partitions(self.replicas, self.partitions)[self.ordinal]


def loadable_path(uri: str) -> str:
    """What DeepGNN's loader accepts: it treats `file:///` as HDFS (it wants a Hadoop classpath),
    so local URIs become plain paths; `s3://` goes through fsspec unchanged."""
    return uri if store.is_s3(uri) else str(store.local_path(uri))


def parse_args(argv: list[str] | None = None) -> ServerArgs:
    parser = argparse.ArgumentParser(prog="python -m graph_engine.server",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True,
                        help="converted graph: /path, file:///path or s3://bucket/prefix")
    parser.add_argument("--port", type=int, required=True,
                        help="gRPC port, 0 for any free one; held from the start, serving only once the "
                             "graph is loaded")
    parser.add_argument("--port-file", help="write the port held here (with --port 0: the one chosen)")
    parser.add_argument("--ordinal", type=int, required=True,
                        help="this server's index (StatefulSet ordinal)")
    parser.add_argument("--replicas", type=int, required=True, help="servers in the fleet")
    parser.add_argument("--partitions", type=int, required=True, help="partitions in the graph")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    # The user-settable ones (infra.contract.SERVER_ARGS, the allow-list DataServiceConfig.args checks).
    for flag, values in SERVER_ARGS.items():
        if values is None:
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, choices=values, default=values[0])
    ns = parser.parse_args(argv)
    args = ServerArgs(ns.data_dir, ns.port, ns.ordinal, ns.replicas, ns.partitions, ns.host, ns.storage,
                      ns.skip_temporal, ns.port_file)
    if not 0 <= args.ordinal < args.replicas:
        parser.error(f"--ordinal must be in 0..{args.replicas - 1} (--replicas is {args.replicas}), "
                     f"got {args.ordinal}")
    try:
        args.my_partitions()
    except ValueError as err:
        parser.error(f"--replicas/--partitions: {err}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535 (0: any free port), got {args.port}")
    return args


class CannotServe(RuntimeError):
    """A problem found before loading: the message names it and the fix."""


def check_graph(args: ServerArgs) -> None:
    """Fail with a clear message where DeepGNN's native loader would abort the process."""
    try:
        found = store.partition_count(args.data_dir)
    except (OSError, ValueError) as err:
        raise CannotServe(f"--data-dir: {err}") from err
    if found != args.partitions:
        raise CannotServe(f"--partitions is {args.partitions} but the graph at {args.data_dir} has {found} "
                          f"partitions; pass --partitions {found}")


def hold_port(args: ServerArgs) -> socket.socket:
    """Bind the port (a free one for --port 0) and keep it until DeepGNN's server binds it too.

    gRPC binds with SO_REUSEPORT, so a second server on a taken port would silently share it and
    clients would reach either one: a plain bind first fails if anyone holds the port. The socket kept
    sets SO_REUSEPORT, which lets DeepGNN's gRPC server (same process) bind beside it and refuses
    every plain bind meanwhile; it never listens, so no connection reaches it.
    """
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    with socket.socket(family) as probe:
        # SO_REUSEADDR: a restarted server may reuse its port while old connections sit in TIME_WAIT.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise CannotServe(
                    f"--port {args.port} is already in use on {args.host}; pick a free port") from err
            raise CannotServe(f"--host/--port: cannot bind {args.address}: {err}") from err
        port = int(probe.getsockname()[1])
        held = socket.socket(family)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        held.bind((args.host, port))
    except OSError as err:
        held.close()
        raise CannotServe(f"--port {port} was taken while it was being held; start again") from err
    return held


def report_port(path: str, port: int) -> None:
    """Write the port whole (a reader never sees a partial file)."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(str(port))
    tmp.replace(path)


def serve(args: ServerArgs, stop: threading.Event) -> None:
    """Hold the port, load this ordinal's partitions, serve until `stop` is set, then reset the server."""
    # Imported here so `--help` and argument errors do not pay for loading the native library.
    from deepgnn.graph_engine.snark.client import PartitionStorageType
    from deepgnn.graph_engine.snark.server import Server

    with hold_port(args) as held, tempfile.TemporaryDirectory(prefix="graphfleet-partitions-") as scratch:
        args = replace(args, port=int(held.getsockname()[1]))
        if args.port_file:
            report_port(args.port_file, args.port)
        check_graph(args)
        partitions = args.my_partitions()
        path = verified_copy(args, partitions, Path(scratch))
        log.info("loading partitions %s of %d from %s", partitions, args.partitions, args.data_dir)
        server = Server(path, [(path, p) for p in partitions], args.address,
                        storage_type=PartitionStorageType[args.storage],
                        skip_temporal_loading=args.skip_temporal)
        held.close()  # DeepGNN's server has the port now
        log.info("serving partitions %s of %d from %s on %s",
                 partitions, args.partitions, args.data_dir, args.address)
        try:
            stop.wait()
        finally:
            log.info("shutting down %s", args.address)
            server.reset()


def verified_copy(args: ServerArgs, partitions: list[int], scratch: Path) -> str:
    """Where DeepGNN loads from, once every file of `partitions` matches the manifest's size and SHA-256.

    A local graph is checked in place; an s3:// graph is downloaded into `scratch` and checked in the
    same pass (one download, as DeepGNN's own fetch would make). A mismatch raises CannotServe naming
    the file: the server exits before opening its port, so readiness never passes.
    """
    try:
        info = store.read_info(args.data_dir)
    except FileNotFoundError:
        info = {}
    expected = store.partition_files(info, partitions)
    if not expected:
        log.warning("%s has no file checksums in its manifest (converted before they were recorded); "
                    "loading unverified", args.data_dir)
        return loadable_path(args.data_dir)
    log.info("verifying %d files of partitions %s", len(expected), partitions)
    try:
        if not store.is_s3(args.data_dir):
            store.verify_files(args.data_dir, expected)
            return loadable_path(args.data_dir)
        store.verify_files(args.data_dir, expected, copy_to=scratch)
        fs, path = store.filesystem(args.data_dir)
        fs.get_file(f"{path}/{store.META}", str(scratch / store.META))
    except store.CorruptGraph as err:
        raise CannotServe(str(err)) from err
    return str(scratch)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    args = parse_args(argv)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    # Installed before loading: a SIGTERM during a long load is honoured as soon as loading returns.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        serve(args, stop)
    except Exception as err:  # the native loader raises bare Exceptions; say what failed, not a traceback
        log.error("cannot serve %s on %s: %s", args.data_dir, args.address, err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
