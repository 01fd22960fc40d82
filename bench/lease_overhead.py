"""What a lease adds to CreateTask and GetTask: local backend over gRPC, and the Pulumi backend
through its CLI seam (tests/fake_pulumi.py, a Python process per CLI call like the real CLI's).

Local: one served connector, one ready fleet of each kind on the same graph: a shared one (`share=`)
and an ordinary one. Then, interleaved, `--calls` times each:

- CreateTask: a new execution joining the shared fleet (takes a lease: flock, a read and one atomic
  write of fleet.json) vs a retried CreateTask of the ordinary fleet's execution (adopting create only);
- GetTask of a ready fleet: shared vs ordinary (both read only: no lease is written on GetTask).

Pulumi (`--pulumi-calls`): the provisioner calls the connector makes (create, status of a ready fleet),
shared vs ordinary, with the CLI processes each one ran: the CLI call count is what a real state backend's
latency multiplies.

    .venv/bin/python -m bench.lease_overhead [--calls 50] [--pulumi-calls 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flyte_agent import DataServiceConfig, DataServiceTask
from graph_engine.convert import convert
from infra.contract import DATA_SERVICE_TASK_TYPE
from tests.test_connector_grpc import Connector, serialized
from tests.test_graph_server import ring_graph


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def pulumi_seam(calls: int) -> dict[str, tuple[list[float], list[int]]]:
    """ms and CLI processes per provisioner call, shared vs ordinary, through the fake CLI."""
    import os

    from flyte_agent import leases
    from flyte_agent.provisioner import Phase, Provision
    from flyte_agent.pulumi_provisioner import PulumiProvisioner
    from flyte_agent.settings import Settings
    from flyte_agent.stack_record import stack_name
    from infra.spec import DataServiceSpec
    from tests import fake_pulumi

    out: dict[str, tuple[list[float], list[int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("PULUMI_CONFIG_PASSPHRASE", "bench-only")
        url = f"file://{tmp}/state"
        cli_path = fake_pulumi.install(Path(tmp))
        settings = Settings(backend="pulumi", backend_url=url, pulumi_command=str(cli_path),
                            gc_interval_seconds=0, check_endpoints=False)
        provisioner = PulumiProvisioner(settings)
        spec = DataServiceSpec(graph_uri="s3://graphs/g", partitions=2, replicas=2, share="b")
        now = time.time()
        shared = leases.shared_provision("p/d", "b", spec, "p/d/first", now)
        plain_spec = DataServiceSpec(graph_uri="s3://graphs/g", partitions=2, replicas=2)
        plain = Provision(name="gf-plain", spec=plain_spec, owner="p/d", execution="p/d/x/n0", created_at=now)
        try:
            for p in (shared, plain):
                provisioner.create(p)
                deadline = time.monotonic() + 120
                while provisioner.status(p).phase is not Phase.READY:
                    assert time.monotonic() < deadline, "fleet not ready through the fake"
                    time.sleep(0.2)

            def measured(key: str, call: Callable[[], object]) -> None:
                before = len(fake_pulumi.calls(url))
                ms = timed(call)
                # An adopting create queues an `up` that finds nothing to do: wait for it.
                deadline = time.monotonic() + 120
                while any(provisioner._ops.busy(stack_name(f.name)) for f in (shared, plain)):
                    assert time.monotonic() < deadline, "an up queued by the create never ended"
                    time.sleep(0.05)
                ms_list, cli = out.setdefault(key, ([], []))
                ms_list.append(ms)
                cli.append(len(fake_pulumi.calls(url)) - before)

            for i in range(calls):
                joining = leases.shared_provision("p/d", "b", spec, f"p/d/join-{i}", time.time())
                measured("create shared (a new lease)", lambda j=joining: provisioner.create(j))
                measured("create plain (retried, adopts)", lambda: provisioner.create(plain))
                measured("status shared (ready)", lambda: provisioner.status(shared))
                measured("status plain (ready)", lambda: provisioner.status(plain))
        finally:
            provisioner.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--pulumi-calls", type=int, default=10)
    args = parser.parse_args()
    if args.pulumi_calls:
        seam = pulumi_seam(args.pulumi_calls)
        print(f"Pulumi seam: {args.pulumi_calls} calls each, interleaved; ms (median, max), CLI processes "
              "(create: the call itself, plus the queued adopting up):")
        for key, (ms, cli) in seam.items():
            print(f"  {key}: {statistics.median(ms):.0f}, {max(ms):.0f}; CLI {statistics.median(cli):g}")
    if not args.calls:
        return
    with tempfile.TemporaryDirectory() as tmp:
        uri = convert(ring_graph(), str(Path(tmp) / "ring"), partitions=2)
        connector = Connector(Path(tmp) / "state", {})
        try:
            connector.wait_serving()
            shared = serialized(DataServiceTask(name="g", config=DataServiceConfig(graph_uri=uri, share="b")))
            plain = serialized(DataServiceTask(name="g", config=DataServiceConfig(graph_uri=uri)))
            shared_meta = connector.create(shared, name="first")
            plain_meta = connector.create(plain, name="plain")
            for meta in (shared_meta, plain_meta):
                connector.wait_terminal(DATA_SERVICE_TASK_TYPE, meta)
            times: dict[str, list[float]] = {k: [] for k in ("create shared", "create plain", "get shared",
                                                             "get plain")}
            for i in range(args.calls):
                times["create shared"].append(timed(lambda i=i: connector.create(shared, name=f"join-{i}")))
                times["create plain"].append(timed(lambda: connector.create(plain, name="plain")))
                times["get shared"].append(timed(lambda: connector.get(DATA_SERVICE_TASK_TYPE, shared_meta)))
                times["get plain"].append(timed(lambda: connector.get(DATA_SERVICE_TASK_TYPE, plain_meta)))
        finally:
            connector.stop()
    print(f"{args.calls} calls each, interleaved, ms (median, max):")
    for key, values in times.items():
        print(f"  {key}: {statistics.median(values):.1f}, {max(values):.1f}")


if __name__ == "__main__":
    main()
