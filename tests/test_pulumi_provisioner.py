"""PulumiProvisioner against the fake CLI (tests/fake_pulumi.py) through the Automation API seam.

The fake is a real executable sharing a file-backed state backend, and its `up` runs the inline program
(GraphDataService) over gRPC, so what is exercised here is the provisioner's real call sequence,
locking, retry and recovery logic.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flyteidl.core.execution_pb2 import TaskExecution
from pulumi.automation.errors import CommandError

from flyte_agent import connector, fleet_program, pod_failures, pulumi_provisioner
from flyte_agent import stack_record as names
from flyte_agent.connector import DataServiceConnector, FleetMeta
from flyte_agent.gc import collect
from flyte_agent.provisioner import DestroyInProgress, InvalidFleetName, NotOwner, Phase, Provision, Status
from flyte_agent.pulumi_cli import TimedPulumiCommand
from flyte_agent.pulumi_provisioner import PulumiProvisioner
from flyte_agent.replicas import pid_alive as _pid_alive
from flyte_agent.settings import Settings
from infra.spec import DataServiceSpec
from tests import fake_pulumi

ROOT = Path(__file__).resolve().parents[1]
WAIT_LIMIT = 90  # seconds a test may wait for the fake before failing instead of hanging


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "test-only")
    cli = fake_pulumi.install(tmp_path)
    yield f"file://{tmp_path}/state", cli


def settings(backend: tuple[str, Path], **overrides: object) -> Settings:
    url, cli = backend
    values: dict[str, object] = dict(
        backend="pulumi", backend_url=url, pulumi_command=str(cli), gc_interval_seconds=0,
        check_endpoints=False, max_concurrent_operations=2, max_attempts=2,
        operation_timeout_seconds=60, command_timeout_seconds=30, delete_wait_seconds=WAIT_LIMIT,
        retry_backoff_seconds=0)
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def make(backend: tuple[str, Path]) -> Iterator[Callable[..., PulumiProvisioner]]:
    made: list[PulumiProvisioner] = []

    def build(health: Callable[[list[str]], list[str]] | None = None, pods: object = None,
              clock: Callable[[], float] = time.time, **overrides: object) -> PulumiProvisioner:
        provisioner = PulumiProvisioner(settings(backend, **overrides), health=health,
                                        pods=pods, clock=clock)  # type: ignore[arg-type]
        made.append(provisioner)
        return provisioner

    yield build
    for provisioner in made:
        provisioner.close()


def provision(name: str, created_at: float | None = None, **spec: object) -> Provision:
    fields: dict[str, object] = {"graph_uri": "s3://graphs/cora", "partitions": 2, "replicas": 2, **spec}
    return Provision(name=name, spec=DataServiceSpec.model_validate(fields), owner="proj/dev",
                     execution=f"exec-{name}", created_at=time.time() if created_at is None else created_at)


def wait(provisioner: PulumiProvisioner, p: Provision, until: set[Phase],
         done: Callable[[Status], bool] = lambda status: True) -> Status:
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        status = provisioner.status(p)
        if status.phase in until and done(status):
            return status
        assert time.monotonic() < deadline, f"still {status} after {WAIT_LIMIT}s"
        time.sleep(0.2)


def ready_fleet(provisioner: PulumiProvisioner, name: str) -> Provision:
    """A one-server fleet, created and READY."""
    p = provision(name, replicas=1)
    provisioner.create(p)
    assert wait(provisioner, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    return p


def calls_for(url: str, stack: str, start: int = 0) -> list[list[str]]:
    return [c for c in fake_pulumi.calls(url)[start:] if stack in c]


def live(url: str) -> list[str]:
    """The stacks that are not tombstones (a delete keeps the stack, empty, with a destroy in its
    history; a failed destroy leaves resources), in name order."""
    return sorted(name for name, stack in fake_pulumi.stacks(url).items()
                  if stack["resources"] or not any(entry["kind"] == "destroy" for entry in stack["history"]))


def shape(call: list[str]) -> str:
    """A call without its volatile parts (the language host's port, an attempt's id), for sequence
    comparisons."""
    text = " ".join("--client" if a.startswith("--client=") else a for a in call)
    return re.sub(r"(graphfleet:attempts \d+|graphfleet attempt) [0-9a-f]{12}\b", r"\1 <id>", text)


# -- pure logic -----------------------------------------------------------------------------------

def test_stack_names_are_deterministic_valid_and_distinct_when_shortened() -> None:
    long_a, long_b = "run-" + "a" * 120 + "-n0", "run-" + "a" * 120 + "-n1"
    assert names.stack_name("f-1") == "f-1"
    assert names.stack_name(long_a) == names.stack_name(long_a)
    assert names.stack_name(long_a) != names.stack_name(long_b)
    assert len(names.stack_name(long_a)) <= names.STACK_NAME_MAX
    assert names.short_stack_name("organization/graphfleet-fleets/f-1") == "f-1"


def test_expiry_only_applies_to_graphfleet_stacks() -> None:
    tags = names.initial_tags("me", "exec", expires_at=1000)
    assert names.is_expired(tags, now=1000) and not names.is_expired(tags, now=999)
    assert not names.is_expired({names.TAG_EXPIRES: "1"}, now=5000)  # not ours: never collected


def test_the_last_attempt_ended_by_its_id_not_by_counting_entries() -> None:
    tags = {names.TAG_ATTEMPTS: names.attempt_tag(1, "0123456789ab")}
    cancelled = ("update", names.attempt_message("ffffffffffff"))  # given back, yet in the history
    assert names.attempts(tags) == 1
    assert not names.last_attempt_ended(tags, [cancelled])
    assert names.last_attempt_ended(tags, [("update", names.attempt_message("0123456789ab")), cancelled])
    assert names.last_attempt_ended({names.TAG_ATTEMPTS: "0"}, [])
    assert names.last_attempt_ended({names.TAG_ATTEMPTS: "1"}, [("update", "")])  # an older record: counted
    failed = {names.TAG_ATTEMPTS: names.attempt_tag(1, "0123456789ab", failed_at=1.0)}
    assert names.last_attempt_ended(failed, []) and names.attempts(failed) == 1


def test_a_lock_conflict_names_its_holder() -> None:
    text = ("the stack is currently locked by 1 lock(s). ...\n  file://x.json: created by "
            "me@node-a (pid 4242) at 2026-01-01T00:00:00Z")
    assert names.parse_lock(text) == names.Lock(host="node-a", pid=4242, created="2026-01-01T00:00:00Z")
    assert names.parse_lock("some other error") is None


# -- through the fake CLI -------------------------------------------------------------------------


def test_create_get_delete_call_sequence_and_endpoints(backend: tuple[str, Path], make,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = backend
    provisioner = make()
    p = provision("fleet-a")
    provisioner.create(p)
    status = wait(provisioner, p, {Phase.READY, Phase.FAILED})

    assert status.phase is Phase.READY, status.message
    assert status.endpoints == [f"fleet-a-{i}.fleet-a.graphfleet.svc.cluster.local:50051" for i in range(2)]
    create_calls = [shape(c) for c in calls_for(url, "fleet-a")]
    up = ("up --yes --skip-preview --message graphfleet attempt <id> --client --exec-kind auto.inline "
          "--stack fleet-a")
    up_index = create_calls.index(up)
    assert create_calls[:up_index + 1] == [
        "stack select --stack fleet-a",
        "stack init fleet-a --secrets-provider passphrase",
        "stack tag set graphfleet:managed true --stack fleet-a",
        "stack tag set graphfleet:owner proj/dev --stack fleet-a",
        "stack tag set graphfleet:execution exec-fleet-a --stack fleet-a",
        f"stack tag set graphfleet:expires-at {int(p.expires_at)} --stack fleet-a",
        "stack tag set graphfleet:attempts 0 --stack fleet-a",
        "stack history --json --stack fleet-a",  # a destroy anywhere in it is a tombstone
        "stack tag ls --json --stack fleet-a",
        "stack tag set graphfleet:attempts 1 <id> --stack fleet-a",  # the id is the up's message
        up,
    ]
    stack = fake_pulumi.stacks(url)["fleet-a"]
    kinds = sorted(r["type"] for r in stack["resources"])
    assert kinds == ["graphfleet:graph:GraphDataService", "kubernetes:apps/v1:StatefulSet",
                     "kubernetes:core/v1:Service", "kubernetes:networking.k8s.io/v1:NetworkPolicy",
                     "kubernetes:policy/v1:PodDisruptionBudget", "pulumi:providers:kubernetes"]
    assert stack["tags"][names.TAG_OWNER] == "proj/dev"

    # Polled by every GetTask: a READY fleet's read is one CLI call. A replica's first READY read also
    # reads the endpoints (the update's for good) and the record (restored if a tag was lost).
    start = len(fake_pulumi.calls(url))
    other = make()
    for replica in (other, other, provisioner):
        assert replica.status(p).endpoints == status.endpoints
    assert [shape(c) for c in calls_for(url, "fleet-a", start)] == [
        "stack history --json --stack fleet-a",
        "stack output --json --stack fleet-a",
        "stack tag ls --json --stack fleet-a",
        "stack history --json --stack fleet-a",
        "stack history --json --stack fleet-a",
    ]
    # ...and the record is checked again, and repaired, at most _RECORD_CHECK_SECONDS later.
    start = len(fake_pulumi.calls(url))
    with fake_pulumi.StateBackend(fake_pulumi.state_dir(url)).state() as data:
        del data["stacks"]["fleet-a"]["tags"][names.TAG_EXECUTION]  # lost to a concurrent tag write
    monkeypatch.setattr(pulumi_provisioner, "_RECORD_CHECK_SECONDS", 0.0)
    assert other.status(p).phase is Phase.READY
    assert [shape(c) for c in calls_for(url, "fleet-a", start)] == [
        "stack history --json --stack fleet-a",
        "stack tag ls --json --stack fleet-a",
        "stack tag set graphfleet:execution exec-fleet-a --stack fleet-a",
    ]

    start = len(fake_pulumi.calls(url))
    provisioner.delete(p.name, p.owner)
    assert [shape(c) for c in calls_for(url, "fleet-a", start)] == [
        "stack select --stack fleet-a",
        "stack tag ls --json --stack fleet-a",  # the owner, checked before anything is touched
        "stack export --show-secrets --stack fleet-a",  # pending creates of an interrupted up, if any
        "destroy --skip-preview --yes --client --exec-kind auto.inline --stack fleet-a",
        "stack history --json --show-secrets --page-size 1 --page 1 --stack fleet-a",
        "stack tag set graphfleet:deleted true --stack fleet-a",
    ]
    # Kept, empty, as a tombstone: its history ends in the destroy, which no later `up` gets past.
    assert live(url) == [] and fake_pulumi.stacks(url)["fleet-a"]["resources"] == []
    assert provisioner.status(p).phase is Phase.FAILED
    provisioner.delete(p.name, p.owner)  # absent is success
    assert live(url) == []


def test_a_kms_secrets_provider_replaces_the_passphrase(backend: tuple[str, Path], make,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = backend
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    with pytest.raises(ValueError, match="PASSPHRASE is not set: without GRAPHFLEET_SECRETS_PROVIDER"):
        make()
    provisioner = make(secrets_provider="awskms://alias/graphfleet")
    p = provision("fleet-kms", replicas=1)
    provisioner.create(p)
    assert wait(provisioner, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    inits = [c for c in fake_pulumi.calls(url) if c[:2] == ["stack", "init"]]
    assert inits == [["stack", "init", "fleet-kms", "--secrets-provider", "awskms://alias/graphfleet"]]
    # Issue 8 item 7: every later operation runs in a fresh work dir, without the Pulumi.<stack>.yaml
    # that names the KMS provider; the CLI must be told to use the state's secrets manager.
    provisioner.delete(p.name, p.owner)
    assert live(url) == []


def test_ready_waits_for_endpoints_to_answer_health(backend: tuple[str, Path], make) -> None:
    down: list[str] = ["all"]
    provisioner = make(health=lambda endpoints: endpoints if down else [], check_endpoints=True)
    p = provision("fleet-h", replicas=1)
    provisioner.create(p)
    status = wait(provisioner, p, {Phase.UPDATING, Phase.READY, Phase.FAILED}, lambda s: bool(s.endpoints))
    assert status.phase is Phase.UPDATING and "do not answer gRPC health SERVING" in status.message
    down.clear()
    assert provisioner.status(p).phase is Phase.READY


def test_retried_create_adopts_the_existing_stack(backend: tuple[str, Path], make) -> None:
    url, _ = backend
    p = provision("fleet-b")
    first = make()
    first.create(p)
    assert wait(first, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    first.close()

    second = make()  # another replica, or this one after a restart
    second.create(p)
    assert wait(second, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    inits = [c for c in fake_pulumi.calls(url) if c[:2] == ["stack", "init"]]
    assert len(inits) == 1 and list(fake_pulumi.stacks(url)) == ["fleet-b"]


def test_bad_spec_fails_at_create_and_creates_nothing(backend: tuple[str, Path], make) -> None:
    url, _ = backend
    provisioner = make()
    with pytest.raises(ValueError, match="graph_uri.*local path"):
        provisioner.create(provision("fleet-bad", graph_uri="/data/graph"))
    assert fake_pulumi.calls(url) == []


def test_failed_up_is_retried_then_failed_with_the_error_across_processes(
        backend: tuple[str, Path], make) -> None:
    url, _ = backend
    error = "kubernetes:apps/v1:StatefulSet fleet-c: 0/2 nodes are available: insufficient memory"
    fake_pulumi.script_faults(url, "fleet-c", up=[f"fail:{error}", f"fail:{error}", f"fail:{error}"])
    p = provision("fleet-c")
    first = make()
    first.create(p)
    wait(first, p, {Phase.QUEUED})  # the first attempt failed and a retry is due
    first.close()  # the retry happens on another replica: the count lives in the stack

    second = make()
    status = wait(second, p, {Phase.READY, Phase.FAILED})
    assert status.phase is Phase.FAILED
    assert "failed 2 times" in status.message and "insufficient memory" in status.message
    ups = [c for c in fake_pulumi.calls(url) if c[0] == "up"]
    assert len(ups) == 2
    assert names.attempts(fake_pulumi.stacks(url)["fleet-c"]["tags"]) == 2


def test_a_failed_up_is_retried_after_a_backoff_that_doubles(backend: tuple[str, Path], make) -> None:
    """Found by the real-engine trial: three attempts ran back to back in 4 s, so a short API outage spent
    them all. The next attempt waits `retry_backoff_seconds`, doubled after each failure."""
    url, _ = backend
    fake_pulumi.script_faults(url, "fleet-b", up=["fail:connection refused", "fail:connection refused", "ok"])
    now = [float(int(time.time()))]  # whole seconds, as the record keeps the failure time
    provisioner = make(max_attempts=3, retry_backoff_seconds=60, clock=lambda: now[0])
    p = provision("fleet-b", replicas=1)
    provisioner.create(p)

    def ups() -> int:
        return sum(1 for c in fake_pulumi.calls(url) if c[0] == "up")

    for tried, backoff in ((1, 60), (2, 120)):
        status = wait(provisioner, p, {Phase.QUEUED}, done=lambda s: " in " in s.message)
        assert f"(attempt {tried + 1} of 3 in {backoff} s) after:" in status.message, status.message
        assert "connection refused" in status.message
        now[0] += backoff - 5
        for _ in range(5):  # status reads before the backoff ran out start nothing
            assert provisioner.status(p).phase is Phase.QUEUED
        assert ups() == tried
        now[0] += 5
    assert wait(provisioner, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    assert ups() == 3


def test_concurrent_provisions_respect_the_operation_bound(backend: tuple[str, Path], make) -> None:
    url, _ = backend
    provisioner = make(max_concurrent_operations=2)
    fleets = [provision(f"fleet-{i}", replicas=1) for i in range(4)]
    for p in fleets:
        provisioner.create(p)
    assert [provisioner.status(p).phase for p in fleets].count(Phase.QUEUED) >= 2
    for p in fleets:
        assert wait(provisioner, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY

    held: set[str] = set()
    most = 0
    for event, stack in fake_pulumi.events(url):
        (held.add if event == "lock" else held.discard)(stack)
        most = max(most, len(held))
    assert most == 2, "four stacks, two workers: exactly two operations should overlap"
    assert live(url) == [f"fleet-{i}" for i in range(4)]


def test_a_delete_starts_before_the_ups_queued_on_a_full_pool(backend: tuple[str, Path], make) -> None:
    url, _ = backend
    provisioner = make(max_concurrent_operations=1)
    done = ready_fleet(provisioner, "fleet-done")
    # The one worker is busy with fleet-busy's `up` (it holds the lock while it sleeps), two more queue.
    fake_pulumi.script_faults(url, "fleet-busy", up=["sleep:5;ok"])
    busy = provision("fleet-busy", replicas=1)
    queued = [provision(f"fleet-q{i}", replicas=1) for i in range(2)]
    start = len(fake_pulumi.events(url))
    for p in (busy, *queued):
        provisioner.create(p)
    deadline = time.monotonic() + WAIT_LIMIT
    while not fake_pulumi.locks(url, "fleet-busy"):
        assert time.monotonic() < deadline, "fleet-busy's up never took its lock"
        time.sleep(0.1)

    provisioner.delete(done.name, done.owner)  # waits for its destroy, which must not wait for the queued ups

    locks = [stack for event, stack in fake_pulumi.events(url)[start:] if event == "lock"]
    assert locks[:2] == ["fleet-busy", "fleet-done"], f"operations in order: {locks}"
    assert "fleet-done" not in live(url)
    for p in queued:
        assert wait(provisioner, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY


def test_a_hung_cli_call_is_killed_at_its_timeout_and_the_stack_recovers(
        backend: tuple[str, Path], make) -> None:
    url, cli = backend
    provisioner = make()
    p = ready_fleet(provisioner, "fleet-t")
    fake_pulumi.script_faults(url, "fleet-t", up=["wedge"])
    command = TimedPulumiCommand(str(cli), long_timeout=3, short_timeout=3)
    env = {"PULUMI_BACKEND_URL": url}
    with pytest.raises(CommandError, match="timed out after 3s and was killed"):
        command.run(["up", "--yes", "--skip-preview", "--stack", "fleet-t"], str(cli.parent), env)
    [lock] = fake_pulumi.locks(url, "fleet-t")
    assert not _pid_alive(lock["pid"])  # the kill leaves a stale lock

    start = len(fake_pulumi.calls(url))
    provisioner.delete(p.name, p.owner)
    ops = [shape(c) for c in fake_pulumi.calls(url)[start:]
           if c[0] in ("destroy", "cancel", "refresh", "stack") and c[:2] != ["stack", "history"]]
    assert ops == [
        "stack select --stack fleet-t",
        "stack tag ls --json --stack fleet-t",
        "stack export --show-secrets --stack fleet-t",
        "destroy --skip-preview --yes --client --exec-kind auto.inline --stack fleet-t",  # locked: stale
        # the dead CLI's lock file is removed (never `cancel`, which removes every lock of the stack),
        # and the wedged up's pending creates are adopted into the state, not cleared
        "stack export --show-secrets --stack fleet-t",
        "destroy --skip-preview --yes --client --exec-kind auto.inline --stack fleet-t",
        "stack tag set graphfleet:deleted true --stack fleet-t",
    ]
    assert live(url) == []


def test_an_interrupt_reaches_the_up_while_other_calls_run_on_its_stack(backend: tuple[str, Path],
                                                                       make) -> None:
    """Item 5 of issue 8: the process table had one entry per stack, which any other call on the stack
    (a status read's `stack tag ls`) overwrote and then removed, so a delete could not stop the `up`."""
    url, cli = backend
    ready_fleet(make(), "fleet-i")
    fake_pulumi.script_faults(url, "fleet-i", up=["hang"])
    command = TimedPulumiCommand(str(cli), long_timeout=WAIT_LIMIT, short_timeout=30)
    env, cwd = {"PULUMI_BACKEND_URL": url}, str(cli.parent)
    with ThreadPoolExecutor(1) as pool:
        up = pool.submit(command.run, ["up", "--yes", "--skip-preview", "--stack", "fleet-i"], cwd, env)
        deadline = time.monotonic() + WAIT_LIMIT
        while not fake_pulumi.locks(url, "fleet-i"):
            assert time.monotonic() < deadline and not up.done(), "the up never took the lock"
            time.sleep(0.1)
        command.run(["stack", "tag", "ls", "--json", "--stack", "fleet-i"], cwd, env)  # ends before the up
        assert command.interrupt("fleet-i") == 1
        with pytest.raises(CommandError, match="canceled"):
            up.result(timeout=WAIT_LIMIT)
    assert fake_pulumi.locks(url, "fleet-i") == []  # a graceful cancel releases the lock


@pytest.mark.parametrize("fault", ["hang", "wedge"])
def test_close_stops_a_running_up_within_a_bounded_time(backend: tuple[str, Path], make, fault: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """close() waited for every running operation: a hanging `up` held it (and the test fixture that
    calls it) for as long as the `up` ran, and a killed test run left `fake_pulumi.py up` behind. It
    cancels them now (SIGINT), and kills a CLI that ignores the cancel (`wedge`) after a grace."""
    url, _ = backend
    monkeypatch.setattr(pulumi_provisioner, "_CLOSE_GRACE_SECONDS", 1.0)
    fake_pulumi.script_faults(url, "fleet-close", up=[fault])
    provisioner = make(max_attempts=1)
    p = provision("fleet-close")
    provisioner.create(p)
    deadline = time.monotonic() + WAIT_LIMIT
    while not fake_pulumi.locks(url, "fleet-close"):
        assert time.monotonic() < deadline, "the up never took the lock"
        time.sleep(0.1)
    [cli_pid] = [lock["pid"] for lock in fake_pulumi.locks(url, "fleet-close")]
    closing = threading.Thread(target=provisioner.close, daemon=True)
    closing.start()
    closing.join(timeout=WAIT_LIMIT)
    try:
        assert not closing.is_alive(), "close() is still waiting for the hanging up"
        assert not _pid_alive(cli_pid), "the up's CLI outlived close()"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(cli_pid, signal.SIGKILL)
    # Stopped, not failed: the attempt is given back, and another replica brings the fleet up (a
    # killed CLI's lock is a dead holder's).
    assert wait(make(max_attempts=1), p, {Phase.READY, Phase.FAILED}).phase is Phase.READY


def test_a_status_read_killed_mid_way_answers_get_task_in_progress(backend: tuple[str, Path], make,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in the 32-fleet chaos run: a CLI process of GetTask's status read was killed, the exception
    reached flytekit's server and propeller got gRPC INTERNAL, a sync failure flyteplugins' webapi cache
    counts for good (more than 5 fail the task: flyteplugins v1.16 internal/webapi/cache.go
    SyncResource). A read that was interrupted is answered as still in progress, and said so."""
    url, _ = backend
    provisioner = make()
    p = ready_fleet(provisioner, "fleet-kr")
    monkeypatch.setattr(connector.provisioning, "_made", (provisioner.settings, provisioner))
    meta = FleetMeta(name=p.name, spec=p.spec.to_custom(), owner=p.owner, execution=p.execution,
                     created_at=p.created_at)
    fake_pulumi.script_faults(url, "fleet-kr", history=["die"])
    answer = DataServiceConnector()._get(meta)
    assert answer.phase == TaskExecution.INITIALIZING, answer
    assert "reading its status was interrupted" in answer.message and "SIGKILL" in answer.message
    assert DataServiceConnector()._get(meta).phase == TaskExecution.SUCCEEDED  # the next poll


def test_failing_destroy_raises_and_keeps_the_stack(backend: tuple[str, Path], make) -> None:
    url, _ = backend
    provisioner = make()
    p = ready_fleet(provisioner, "fleet-d")
    fake_pulumi.script_faults(url, "fleet-d", destroy=["fail:deleting StatefulSet: server is unavailable"])
    with pytest.raises(Exception, match="server is unavailable"):
        provisioner.delete(p.name, p.owner)
    assert "fleet-d" in live(url)
    provisioner.delete(p.name, p.owner)  # the caller's retry succeeds
    assert live(url) == []


def delete_until_settled(provisioner: PulumiProvisioner, p: Provision) -> Exception | None:
    """Call delete() as Propeller does until it stops answering "in progress": None on success."""
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        try:
            provisioner.delete(p.name, p.owner)
        except DestroyInProgress:
            assert time.monotonic() < deadline, f"the destroy did not end within {WAIT_LIMIT}s"
            time.sleep(0.2)
        except Exception as err:  # noqa: BLE001 - returned for the test to check
            return err
        else:
            return None


def test_delete_returns_in_progress_within_its_budget_and_later_reports_success(
        backend: tuple[str, Path], make) -> None:
    url, _ = backend
    provisioner = make(delete_wait_seconds=0.5)
    p = ready_fleet(provisioner, "fleet-slow")
    fake_pulumi.script_faults(url, "fleet-slow", destroy=["sleep:8;ok"])

    with pytest.raises(DestroyInProgress, match="pulumi destroy is still running after 0.5s"):
        provisioner.delete(p.name, p.owner)
    # Another replica (or this one after a restart) finds the destroy by its lock, held by a live CLI.
    with pytest.raises(DestroyInProgress, match=r"locked by another running pulumi operation \(pid \d+"):
        make().delete(p.name, p.owner)

    assert delete_until_settled(provisioner, p) is None
    assert live(url) == []
    destroys = [c for c in calls_for(url, "fleet-slow") if c[0] == "destroy"]
    assert len(destroys) == 2, "repeated deletes must rejoin the running destroy, not start new ones"
    make().delete(p.name, p.owner)  # absent is success


def test_a_slow_destroy_that_fails_is_reported_by_a_later_delete(backend: tuple[str, Path], make) -> None:
    url, _ = backend
    provisioner = make(delete_wait_seconds=0.3)
    p = ready_fleet(provisioner, "fleet-sf")
    fake_pulumi.script_faults(url, "fleet-sf",
                              destroy=["sleep:3;fail:deleting StatefulSet: server is unavailable"])

    with pytest.raises(DestroyInProgress):
        provisioner.delete(p.name, p.owner)
    err = delete_until_settled(provisioner, p)
    assert isinstance(err, RuntimeError)
    assert "stack fleet-sf: pulumi destroy failed" in str(err) and "server is unavailable" in str(err)
    assert "fleet-sf" in live(url)
    assert delete_until_settled(provisioner, p) is None  # the next call starts a fresh destroy
    assert live(url) == []


def test_gc_removes_only_expired_graphfleet_stacks(backend: tuple[str, Path], make) -> None:
    url, _ = backend
    provisioner = make()
    now = time.time()
    # Both live when made (nothing is brought up past its expiry); gc then runs at a later time.
    old = provision("fleet-old", created_at=now - 1800, ttl_seconds=3600, replicas=1)
    fresh = provision("fleet-new", created_at=now + 3600, ttl_seconds=3600, replicas=1)
    for p in (old, fresh):
        provisioner.create(p)
    for p in (old, fresh):
        assert wait(provisioner, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    env = {**os.environ, "PULUMI_BACKEND_URL": url}
    subprocess.run([*settings(backend).pulumi_command.split(), "stack", "init", "someone-else"], env=env,
                   check=True, capture_output=True, timeout=30)

    start = len(fake_pulumi.calls(url))
    assert provisioner.gc(now + 1801) == ["fleet-old"]
    assert live(url) == ["fleet-new", "someone-else"]
    assert [shape(c) for c in fake_pulumi.calls(url)[start:]] == [
        "stack ls --json",
        "stack select --stack fleet-new", "stack tag ls --json --stack fleet-new",
        "stack select --stack fleet-old", "stack tag ls --json --stack fleet-old",
        "stack export --show-secrets --stack fleet-old",
        "destroy --skip-preview --yes --client --exec-kind auto.inline --stack fleet-old",
        "stack history --json --show-secrets --page-size 1 --page 1 --stack fleet-old",
        "stack rm --yes fleet-old",
        "stack select --stack someone-else", "stack tag ls --json --stack someone-else",
    ]


# -- garbage collection: `graphfleet gc`, flyte_agent.gc.collect and the connector's sweep ---------

GRAPHFLEET = str(Path(sys.executable).with_name("graphfleet"))


def seed_stack(backend: tuple[str, Path], name: str, expires_at: float) -> None:
    """A fleet stack as the provisioner leaves it (tags only: gc never runs the program)."""
    url, cli = backend
    env = {**os.environ, "PULUMI_BACKEND_URL": url}
    tags = names.initial_tags("proj/dev", f"exec-{name}", expires_at)
    tagging = (["stack", "tag", "set", key, value, "--stack", name] for key, value in tags.items())
    for args in [["stack", "init", name], *tagging]:
        subprocess.run([str(cli), *args], env=env, check=True, capture_output=True, timeout=30)


def test_collect_tears_down_expired_fleets_only(backend: tuple[str, Path]) -> None:
    url, _ = backend
    now = time.time()
    seed_stack(backend, "fleet-expired", now - 1)
    seed_stack(backend, "fleet-live", now + 3600)

    assert collect(settings(backend), now) == ["fleet-expired"]
    assert live(url) == ["fleet-live"]
    assert collect(settings(backend), now) == []


def test_graphfleet_gc_as_an_operator_runs_it(backend: tuple[str, Path], tmp_path: Path) -> None:
    url, cli = backend
    now = time.time()
    for name in ("fleet-old-a", "fleet-old-b"):
        seed_stack(backend, name, now - 60)
    seed_stack(backend, "fleet-live", now + 3600)
    fake_pulumi.script_faults(url, "fleet-old-b", destroy=["fail:deleting Service: connection refused"])
    env = {**os.environ, "GRAPHFLEET_BACKEND": "pulumi", "GRAPHFLEET_PULUMI_BACKEND_URL": url,
           "GRAPHFLEET_PULUMI_COMMAND": str(cli), "PULUMI_CONFIG_PASSPHRASE": "test-only"}

    def gc(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([GRAPHFLEET, "gc"], env={**env, **extra}, cwd=tmp_path, capture_output=True,
                              text=True, timeout=180)

    failed = gc()
    assert failed.returncode == 1, failed.stderr
    assert failed.stdout.splitlines() == ["fleet-old-a"]
    assert "error: garbage collection removed 1 stack(s) but failed on 1" in failed.stderr
    assert "fleet-old-b: " in failed.stderr and "connection refused" in failed.stderr
    assert sorted(fake_pulumi.stacks(url)) == ["fleet-live", "fleet-old-b"]  # gc removes what it collects

    retried = gc()  # the next run (cron) retries what failed
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.splitlines() == ["fleet-old-b"]
    assert "1 expired fleet(s) removed" in retried.stderr
    assert live(url) == ["fleet-live"]

    bad = gc(GRAPHFLEET_BACKEND="k8s")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: connector settings: GRAPHFLEET_BACKEND: Input should be 'local' or "
                                 "'pulumi'")


def test_the_connector_sweeps_expired_fleets_on_its_own(backend: tuple[str, Path], make) -> None:
    url, _ = backend
    now = time.time()
    seed_stack(backend, "fleet-expired", now - 1)
    seed_stack(backend, "fleet-live", now + 3600)

    make(gc_interval_seconds=0.2)  # no gc() call from here on: only the sweep thread acts

    deadline = time.monotonic() + WAIT_LIMIT
    while "fleet-expired" in fake_pulumi.stacks(url):
        assert time.monotonic() < deadline, f"the sweep did not remove the expired fleet in {WAIT_LIMIT}s"
        time.sleep(0.2)
    assert live(url) == ["fleet-live"]


_CONNECTOR = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.test_pulumi_provisioner import provision
    from flyte_agent.drain import drain_on_sigterm
    from flyte_agent.pulumi_provisioner import PulumiProvisioner
    from flyte_agent.settings import Settings
    settings = Settings.model_validate_json({settings!r})
    provisioner = PulumiProvisioner(settings)
    drain_on_sigterm(provisioner.drain)  # as flyte_agent/serve.py does for the served connector
    provisioner.create(provision({name!r}))
    time.sleep(600)
""")


def start_connector_child(backend: tuple[str, Path], name: str,
                          **overrides: object) -> tuple[subprocess.Popen[bytes], int]:
    """A connector process (its own session, like a pod) whose `up` of `name` hangs; returns it and
    the pid of the CLI running that `up` once it holds the lock."""
    url, _ = backend
    fake_pulumi.script_faults(url, name, up=["hang"])
    script = _CONNECTOR.format(root=str(ROOT), settings=settings(backend, **overrides).model_dump_json(),
                               name=name)
    child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        stack = fake_pulumi.stacks(url).get(name)
        held = fake_pulumi.locks(url, name)
        if stack and held and stack["pending"]:
            return child, int(held[0]["pid"])
        if child.poll() is not None or time.monotonic() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
            raise AssertionError(f"the child never reached the middle of its update: "
                                 f"{child.stderr.read() if child.stderr else ''}")
        time.sleep(0.2)


def test_a_replica_stopped_with_sigterm_cancels_its_operations_and_releases_their_locks(
        backend: tuple[str, Path], make) -> None:
    """Issue 8 item 8: nothing handled SIGTERM, so every rollout stranded in-flight fleets behind
    locks that only a stale-lock rule (45 min across pods) could break."""
    url, _ = backend
    # One attempt allowed: the drained attempt was cancelled, not failed, so it does not use it up.
    child, cli_pid = start_connector_child(backend, "fleet-term", max_attempts=1)
    try:
        child.send_signal(signal.SIGTERM)  # the connector process only, as the kubelet does
        assert child.wait(timeout=WAIT_LIMIT) == 128 + signal.SIGTERM
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    stack = fake_pulumi.stacks(url)["fleet-term"]
    assert fake_pulumi.locks(url, "fleet-term") == [], "the drained replica left its lock behind"
    assert [(e["kind"], e["result"]) for e in stack["history"]] == [("update", "failed")]
    deadline = time.monotonic() + WAIT_LIMIT
    while _pid_alive(cli_pid):
        assert time.monotonic() < deadline, "the CLI outlived its drained connector"
        time.sleep(0.1)
    # Another replica carries on at once: no lock to judge.
    fresh = make(max_attempts=1)
    assert wait(fresh, provision("fleet-term"), {Phase.READY, Phase.FAILED}).phase is Phase.READY


def kill_mid_update(backend: tuple[str, Path], name: str, **overrides: object) -> int:
    """A connector pod dies in the middle of `up` of `name`: the connector and the CLI it started, with
    no chance to clean up; the objects the `up` created are in the cluster as pending creates."""
    url, _ = backend
    child, cli_pid = start_connector_child(backend, name, **overrides)
    os.killpg(child.pid, signal.SIGKILL)
    os.kill(cli_pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert [lock["pid"] for lock in fake_pulumi.locks(url, name)] == [cli_pid]
    return cli_pid


def test_connector_killed_mid_update_is_finished_by_a_fresh_process(backend: tuple[str, Path], make) -> None:
    url, _ = backend
    # One attempt allowed: the killed one did not fail, it died with its replica, so it is given back.
    cli_pid = kill_mid_update(backend, "fleet-k", max_attempts=1)
    start = len(fake_pulumi.calls(url))
    fresh = make(max_attempts=1)
    p = provision("fleet-k")
    # The retried up creates objects that exist (the dead up's pending creates): it succeeds only
    # because fleet stacks upsert (pulumi-kubernetes >= 4.29).
    assert wait(fresh, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    stack = fake_pulumi.stacks(url)["fleet-k"]
    assert fake_pulumi.locks(url, "fleet-k") == []
    # One lock step (flyte_agent/replicas.py `settle`) before the up: the dead lock went by its file, so
    # one `up` ran (not one that met the lock and a second), and no refresh cleared the pending creates.
    ran = [c[0] for c in calls_for(url, "fleet-k", start) if c[0] in ("up", "refresh", "cancel")]
    assert ran == ["up"], ran
    assert stack["pending"], "the dead up's pending creates are carried over, as the real up does"
    fresh.delete(p.name, p.owner)
    assert live(url) == []
    assert fake_pulumi.cluster(url) == {}, "the destroy left objects in the cluster"
    assert not _pid_alive(cli_pid), "the killed CLI is still running"


def test_an_attempt_that_died_after_a_cancelled_one_is_still_given_back(backend: tuple[str, Path],
                                                                      make) -> None:
    """A cancelled `up` (a drain) is given back but leaves a failed history entry; the attempts were
    told finished by counting history entries, so the next attempt dying with its replica looked
    finished (one entry, one attempt) and a fresh replica gave a healthy fleet up."""
    url, _ = backend
    child, _ = start_connector_child(backend, "fleet-cd", max_attempts=1)
    try:
        child.send_signal(signal.SIGTERM)  # a rollout: the up is cancelled and given back
        assert child.wait(timeout=WAIT_LIMIT) == 128 + signal.SIGTERM
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert [(e["kind"], e["result"]) for e in fake_pulumi.stacks(url)["fleet-cd"]["history"]] == [
        ("update", "failed")]
    kill_mid_update(backend, "fleet-cd", max_attempts=1)  # the next replica dies mid-up
    status = wait(make(max_attempts=1), provision("fleet-cd"), {Phase.READY, Phase.FAILED})
    assert status.phase is Phase.READY, status.message


def test_ups_failing_before_they_lock_use_their_attempts_up(backend: tuple[str, Path], make) -> None:
    """An attempt has ended when its history entry exists, or when it failed without one (the CLI
    failed before it took the lock): else it would be taken for one that died, retried for ever."""
    url, _ = backend
    fake_pulumi.script_faults(url, "fleet-pre", **{"up-start": ["fail:plugin kubernetes not found"] * 3})
    p = provision("fleet-pre", replicas=1)
    status = wait(make(max_attempts=2), p, {Phase.READY, Phase.FAILED})
    assert status.phase is Phase.FAILED and "failed 2 times" in status.message, status.message
    assert "plugin kubernetes not found" in status.message


def test_a_replica_killed_right_before_its_recovering_up_leaves_nothing_unrecorded(
        backend: tuple[str, Path], make) -> None:
    """Review finding (issue 8 item 6): recovery ran `refresh --clear-pending-creates` and then `up`; a
    replica dying between the two left the dead up's objects in no state, and a later destroy (an
    abort, gc) left them running. Now nothing clears them: the pending creates stay in the state until
    an `up` adopts their objects or a destroy deletes them."""
    url, _ = backend
    kill_mid_update(backend, "fleet-w")
    made = set(fake_pulumi.cluster(url))
    assert any(key.startswith("kubernetes:apps/v1:StatefulSet:") for key in made), made
    # Replica B takes the fleet over and dies (its pod, with the CLI) as its `up` starts on the freed
    # stack: after the locks were settled, before anything new was created.
    fake_pulumi.script_faults(url, "fleet-w", **{"up-start": ["kill-connector-when-free"]})
    script = _CONNECTOR.format(root=str(ROOT), settings=settings(backend).model_dump_json(), name="fleet-w")
    child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert child.wait(timeout=WAIT_LIMIT) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert fake_pulumi.locks(url, "fleet-w") == []
    p = provision("fleet-w")
    make().delete(p.name, p.owner, abort=True)  # the task is aborted; no replica ran its up again
    assert fake_pulumi.cluster(url) == {}, "objects of the interrupted create outlived the destroy"


def test_an_up_killed_from_outside_before_it_locks_does_not_use_up_an_attempt(backend: tuple[str, Path],
                                                                             make) -> None:
    """Found by bench/chaos.py: a CLI killed before it took the lock (OOM killer, its pod) left no lock
    and no history, only a used attempt with "no error recorded"; three made a healthy fleet FAILED."""
    url, _ = backend
    fake_pulumi.script_faults(url, "fleet-oom", **{"up-start": ["die"]})
    p = provision("fleet-oom")
    assert wait(make(max_attempts=1), p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    assert [c[0] for c in calls_for(url, "fleet-oom") if c[0] == "up"] == ["up", "up"]


@pytest.mark.parametrize("how", ["abort", "gc"])
def test_a_destroy_after_an_interrupted_create_removes_what_exists_in_the_cluster(
        backend: tuple[str, Path], make, how: str) -> None:
    """Issue 8 item 6: the killed `up`'s creates are pending operations whose objects exist. A destroy
    deletes only the state's resources (pending creates are carried over), and clearing them first
    dropped them from the state: the StatefulSet outlived its deleted fleet."""
    url, _ = backend
    kill_mid_update(backend, "fleet-o")
    made = set(fake_pulumi.cluster(url))
    assert any(key.startswith("kubernetes:apps/v1:StatefulSet:") for key in made), made
    p = provision("fleet-o")
    if how == "abort":  # the task's DeleteTask, on a replica that did not run the up
        make().delete(p.name, p.owner, abort=True)
        assert live(url) == []
    else:  # its expiry passed (gc) before any replica read its status again
        assert make().gc(p.expires_at + 1) == ["fleet-o"]
    assert fake_pulumi.cluster(url) == {}, "objects of the interrupted create outlived the destroy"


def test_without_upsert_the_recovered_up_fails_on_the_objects_it_made(
        backend: tuple[str, Path], make, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 7 item 3: a create is not an upsert since pulumi-kubernetes 4.29 (PR 4278); the recovery
    above relies on FLEET_UPSERT_EXISTING_OBJECTS, and this is what happens without it."""
    monkeypatch.setattr(fleet_program, "FLEET_UPSERT_EXISTING_OBJECTS", False)
    kill_mid_update(backend, "fleet-u")
    status = wait(make(), provision("fleet-u"), {Phase.READY, Phase.FAILED})
    assert status.phase is Phase.FAILED and "already exists" in status.message, status.message


# -- releasing a workflow execution: the teardown of an on_failure handler ------------------------

def fleet_of(provisioner: PulumiProvisioner, name: str, execution: str) -> Provision:
    """A one-server fleet of the task execution `execution`, created and READY."""
    p = Provision(name=name, spec=provision(name, replicas=1).spec, owner="proj/dev", execution=execution,
                  created_at=time.time())
    provisioner.create(p)
    assert wait(provisioner, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    return p


def test_releasing_an_execution_destroys_its_stacks_only(backend: tuple[str, Path], make) -> None:
    url, _ = backend
    provisioner = make()
    fleet_of(provisioner, "fleet-r1-a", "proj/dev/run1/n0")
    fleet_of(provisioner, "fleet-r1-b", "proj/dev/run1/dn1-n0")
    fleet_of(provisioner, "fleet-r2", "proj/dev/run2/n0")
    seed_stack(backend, "fleet-untagged", time.time() + 3600)  # execution tag "exec-fleet-untagged"

    other = make()  # any replica finds them: the stack tags are the record
    assert other.release_execution("proj/dev/run1") == ["fleet-r1-a", "fleet-r1-b"]
    assert live(url) == ["fleet-r2", "fleet-untagged"]
    assert other.release_execution("proj/dev/run1") == []  # none left: still a success
    with pytest.raises(ValueError, match="'proj/dev' is not project/domain/name"):
        other.release_execution("proj/dev")
    assert live(url) == ["fleet-r2", "fleet-untagged"]


def release_until_settled(provisioner: PulumiProvisioner, execution: str) -> list[str] | Exception:
    """Release as a polled teardown task does until it stops answering "in progress"."""
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        try:
            return provisioner.release_execution(execution)
        except DestroyInProgress:
            assert time.monotonic() < deadline, f"the release did not end within {WAIT_LIMIT}s"
            time.sleep(0.2)
        except Exception as err:  # noqa: BLE001 - returned for the test to check
            return err


def test_a_release_answers_in_progress_then_reports_a_failed_destroy(backend: tuple[str, Path],
                                                                      make) -> None:
    url, cli = backend
    provisioner = make(delete_wait_seconds=0.5)
    fleet_of(provisioner, "fleet-ok", "proj/dev/run3/n0")
    fleet_of(provisioner, "fleet-slow", "proj/dev/run3/n1")
    # fleet-slow's destroy holds on until the test opens the gate: however loaded the machine (however
    # long the listing takes), the first call cannot see it end.
    gate = cli.parent / "destroy-may-end"
    fake_pulumi.script_faults(url, "fleet-slow",
                              destroy=[f"until:{gate};fail:deleting StatefulSet: server is unavailable"])

    # In progress: still listing, or listed and destroying.
    with pytest.raises(DestroyInProgress, match="(releasing proj/dev/run3 has not ended|listing the stacks "
                                                "of proj/dev/run3 is still running) after 0.5s"):
        provisioner.release_execution("proj/dev/run3")
    gate.touch()
    failed = release_until_settled(provisioner, "proj/dev/run3")
    assert isinstance(failed, RuntimeError), failed
    assert "could not release 1 of the 2 fleet(s) of proj/dev/run3" in str(failed)
    assert "stack fleet-slow: pulumi destroy failed" in str(failed) and "server is unavailable" in str(failed)
    assert live(url) == ["fleet-slow"]
    assert release_until_settled(provisioner, "proj/dev/run3") == ["fleet-slow"]  # a retry finishes it
    assert live(url) == []


def test_a_teardown_destroys_its_own_fleet_by_name_and_never_another_owners(
        backend: tuple[str, Path], make) -> None:
    url, _ = backend
    provisioner = make()
    fleet = fleet_of(provisioner, "fleet-named", "proj/dev/run4/n0")
    before = len(fake_pulumi.calls(url))
    for owner in ("proj/prod", "other/dev", ""):
        with pytest.raises(NotOwner, match="does not belong to .*nothing was touched"):
            provisioner.delete(fleet.name, owner)
    assert not [c for c in fake_pulumi.calls(url)[before:] if c[0] in ("destroy", "cancel", "refresh")]
    assert provisioner.status(fleet).phase is Phase.READY
    for bad in ("../../etc", "/abs/path", "Fleet", "a" * 64, "", "fleet/../x"):
        with pytest.raises(InvalidFleetName):
            provisioner.delete(bad, "proj/dev")
    # All the teardown task knows is the name: no spec to build the fleet's program from.
    provisioner.delete(fleet.name, "proj/dev")
    assert live(url) == []


# -- the stack record under races (issue 8 items 2 and 3) ---------------------------------------------

def test_concurrent_tag_writes_lose_one_like_the_state_backend(backend: tuple[str, Path]) -> None:
    """The fake is as harsh as pulumi's DIY `stack tag set`: each writer rewrites the whole tags file."""
    url, cli = backend
    command = TimedPulumiCommand(str(cli), long_timeout=WAIT_LIMIT, short_timeout=30)
    env, cwd = {"PULUMI_BACKEND_URL": url}, str(cli.parent)
    command.run(["stack", "init", "s1", "--secrets-provider", "passphrase"], cwd, env)
    fake_pulumi.script_faults(url, "s1", **{"tag set a": ["sleep:3;ok"]})
    faults = fake_pulumi.state_dir(url) / "faults.json"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(command.run, ["stack", "tag", "set", "a", "1", "--stack", "s1"], cwd, env)
        deadline = time.monotonic() + WAIT_LIMIT
        while '"tag set a": ["sleep' in faults.read_text():  # popped once the slow writer has read
            assert time.monotonic() < deadline and not slow.done()
            time.sleep(0.05)
        command.run(["stack", "tag", "set", "b", "2", "--stack", "s1"], cwd, env)
        slow.result(timeout=WAIT_LIMIT)
    assert fake_pulumi.stacks(url)["s1"]["tags"] == {"a": "1"}  # b was written, then lost


def test_a_lost_tag_write_is_restored_by_the_next_status_read(backend: tuple[str, Path], make) -> None:
    url, _ = backend
    provisioner = make()
    p = Provision(name="fleet-tags", spec=provision("fleet-tags", replicas=1).spec, owner="proj/dev",
                  execution="proj/dev/run9/n0", created_at=time.time())
    fake_pulumi.script_faults(url, "fleet-tags", **{f"tag set {names.TAG_EXECUTION}": ["fail:conn reset"]})
    provisioner.create(p)
    assert wait(provisioner, p, {Phase.READY, Phase.FAILED}).phase is Phase.READY
    tags = fake_pulumi.stacks(url)["fleet-tags"]["tags"]
    assert (tags[names.TAG_EXECUTION], tags[names.TAG_OWNER]) == ("proj/dev/run9/n0", "proj/dev")
    # Without the execution tag the fleet would be invisible to the release (and to gc, without expiry).
    assert make().release_execution("proj/dev/run9") == ["fleet-tags"]


def test_an_abort_on_another_replica_leaves_a_tombstone_no_queued_up_gets_past(
        backend: tuple[str, Path], make) -> None:
    url, _ = backend
    a, b, c = make(max_concurrent_operations=1), make(), make()
    # 1. The `up` is still queued on A (its one worker is busy) when B's abort finds no stack.
    fake_pulumi.script_faults(url, "fleet-busy", up=["sleep:5;ok"])
    a.create(provision("fleet-busy", replicas=1))
    queued = provision("fleet-q", replicas=1)
    a.create(queued)
    b.delete(queued.name, queued.owner, abort=True)
    # 2. C's `up` read the history before B's destroy and takes the lock after it (its attempt count,
    # written between the two, is held up: the first write of that tag is the initial 0).
    raced = provision("fleet-r", replicas=1)
    fake_pulumi.script_faults(url, "fleet-r", **{"tag set graphfleet:attempts": ["ok", "sleep:10;ok"]})
    c.create(raced)
    deadline = time.monotonic() + WAIT_LIMIT
    attempt = f"stack tag set {names.TAG_ATTEMPTS} 1 <id> --stack fleet-r"
    while attempt not in map(shape, fake_pulumi.calls(url)):
        assert time.monotonic() < deadline, "C's up never got to its attempt"
        time.sleep(0.1)
    b.delete(raced.name, raced.owner, abort=True)

    for p, replica in ((queued, a), (raced, c)):
        status = wait(replica, p, {Phase.FAILED, Phase.READY})
        assert status.phase is Phase.FAILED and "was deleted" in status.message, status
        assert fake_pulumi.stacks(url)[p.name]["resources"] == [], f"{p.name} was created after its abort"
    assert live(url) == ["fleet-busy"]
    # C's `up` did run, after the destroy, and its program's guard (under the lock) created nothing.
    history = [(e["kind"], e["result"]) for e in fake_pulumi.stacks(url)["fleet-r"]["history"]]
    assert history == [("destroy", "succeeded"), ("update", "failed")], history


def test_nothing_brings_up_a_fleet_past_its_expiry(backend: tuple[str, Path], make) -> None:
    """Issue 8 item 11: the Pulumi backend re-created an expired fleet (skipping the connector's check)."""
    url, _ = backend
    provisioner = make()
    old = provision("fleet-old", created_at=time.time() - 7 * 3600)  # ttl_seconds 6 h
    provisioner.create(old)
    status = wait(provisioner, old, {Phase.FAILED, Phase.READY})
    assert status.phase is Phase.FAILED and "expired (ttl_seconds 21600)" in status.message, status
    assert not [c for c in fake_pulumi.calls(url) if c[0] == "up" or c[:2] == ["stack", "init"]]


def test_a_fleet_that_gives_up_is_destroyed_and_a_renewed_one_outlives_its_ttl(
        backend: tuple[str, Path], make) -> None:
    """Issue 8 item 9: a FAILED fleet was left running (propeller calls DeleteTask only on abort), and a
    holder running longer than the TTL lost its fleet."""
    url, _ = backend
    provisioner = make()
    bad = provision("fleet-bad", replicas=1)
    fake_pulumi.script_faults(url, "fleet-bad", up=["fail:ImagePullBackOff"] * 2)
    provisioner.create(bad)
    status = wait(provisioner, bad, {Phase.FAILED, Phase.READY})
    assert status.phase is Phase.FAILED and "ImagePullBackOff" in status.message, status
    deadline = time.monotonic() + WAIT_LIMIT
    while "fleet-bad" in live(url):  # the give-up destroys what the failed ups made
        assert time.monotonic() < deadline, fake_pulumi.stacks(url)["fleet-bad"]["resources"]
        time.sleep(0.2)
    status = wait(provisioner, bad, {Phase.FAILED, Phase.READY})
    assert "failed 2 times" in status.message and "destroyed" in status.message, status

    p = ready_fleet(provisioner, "fleet-long")
    later = p.expires_at + 3600
    assert provisioner.renew(p.name, p.owner, later) == int(later)
    assert provisioner.renew(p.name, p.owner, p.expires_at) == int(later)  # never shortened
    with pytest.raises(NotOwner):
        provisioner.renew(p.name, "other/dev", later + 3600)
    assert make().gc(p.expires_at + 1) == ["fleet-bad"]  # only the expired tombstone
    assert "fleet-long" in live(url)
    assert make().gc(later) == ["fleet-long"]


class ClusterPods:
    """The fleet's pods as the provisioner's pod reader sees them; `found` is set by the test."""

    def __init__(self) -> None:
        self.found: dict[str, object] | None = {}
        self.refused: list[object] = []  # the StatefulSet's FailedCreate events

    def pods(self, namespace: str, fleet: str) -> dict[str, object] | None:
        return self.found

    def create_failures(self, namespace: str, fleet: str) -> list[object] | None:
        return self.refused

    def log_tail(self, server: object) -> str:
        return ""


def test_a_fleet_whose_image_cannot_be_pulled_fails_now_and_is_destroyed(
        backend: tuple[str, Path], make) -> None:
    """Issue 8 item 10: the `up` waits for the StatefulSet (startup_seconds + 600 s, three attempts)
    while the kubelet already says the image cannot be had; the pods tell it within a status read."""
    from tests.test_pod_failures import container, pod

    url, _ = backend
    cluster = ClusterPods()
    fake_pulumi.script_faults(url, "fleet-img", up=["hang"])
    provisioner = make(pods=cluster)
    p = provision("fleet-img", replicas=1, partitions=1)
    provisioner.create(p)
    coming = wait(provisioner, p, {Phase.UPDATING},
                  lambda s: bool(fake_pulumi.stacks(url).get("fleet-img", {}).get("pending")))
    assert [s.pod for s in coming.servers] == ["fleet-img-0"], "status carries the servers from the pods"
    assert coming.message.startswith("1/1 servers pending ("), coming.message
    cluster.found = {"fleet-img-0": pod(container("ImagePullBackOff", 'Back-off pulling image "bad:tag"'))}
    failed = provisioner.status(p)
    assert failed.phase is Phase.FAILED, failed
    assert 'ImagePullBackOff: Back-off pulling image "bad:tag"' in failed.message
    assert "pod graphfleet/fleet-img-0: container graph-engine" in failed.message, failed.message
    deadline = time.monotonic() + WAIT_LIMIT
    while "fleet-img" in live(url) or fake_pulumi.cluster(url):
        assert time.monotonic() < deadline, "the hung up was not stopped and its objects not destroyed"
        time.sleep(0.2)
    cluster.found = {}
    again = wait(provisioner, p, {Phase.FAILED})  # any later read, on any replica: from the stack's tags
    assert again.phase is Phase.FAILED and "ImagePullBackOff" in again.message, again


def test_a_fleet_whose_pods_a_quota_refuses_fails_after_the_grace_with_the_apis_words(
        backend: tuple[str, Path], make) -> None:
    """No pod exists to read when the API refuses the StatefulSet's pods (a ResourceQuota, an
    admission webhook): the controller's FailedCreate events say why, once the grace has passed."""
    from datetime import UTC, datetime

    from kubernetes.client import CoreV1Event, V1ObjectMeta, V1ObjectReference

    url, _ = backend
    cluster = ClusterPods()
    fake_pulumi.script_faults(url, "fleet-quota", up=["hang"])
    now = [float(int(time.time()))]  # whole seconds, as the record keeps the failure time
    provisioner = make(pods=cluster, clock=lambda: now[0])
    p = provision("fleet-quota", replicas=2, partitions=2)
    provisioner.create(p)
    wait(provisioner, p, {Phase.UPDATING}, lambda s: bool(fake_pulumi.stacks(url).get("fleet-quota",
                                                                                     {}).get("pending")))
    refusal = ('create Pod fleet-quota-0 in StatefulSet fleet-quota failed error: pods "fleet-quota-0" is '
               "forbidden: exceeded quota: fleets, requested: cpu=4, used: cpu=30, limited: cpu=32")
    stamp = datetime.fromtimestamp(now[0], UTC)
    cluster.refused = [CoreV1Event(metadata=V1ObjectMeta(name="e1"), involved_object=V1ObjectReference(),
                               reason="FailedCreate", message=refusal, count=7, first_timestamp=stamp,
                               last_timestamp=stamp)]
    assert provisioner.status(p).phase is Phase.UPDATING  # within the grace: quota may free up
    now[0] += pod_failures.UNSCHEDULABLE_SECONDS + 1
    failed = provisioner.status(p)
    assert failed.phase is Phase.FAILED, failed
    assert "exceeded quota: fleets, requested: cpu=4" in failed.message and "7 time(s)" in failed.message
    cluster.found = {"fleet-quota-0": object(), "fleet-quota-1": object()}  # every pod made: no refusal
    assert pod_failures.create_failure(cluster.refused, 2, 2, now[0], 0.0) is None


def test_round_robin_status_reads_start_no_up_while_another_replica_runs_one(
        backend: tuple[str, Path], make) -> None:
    """Issue 8 item 11: GetTasks reach replicas in turn; each status read on a replica other than the
    one running the `up` queued another `up`, which could only fail on the stack's lock."""
    url, _ = backend
    fake_pulumi.script_faults(url, "fleet-rr", up=["sleep:4;ok"])
    a, b = make(), make()
    p = provision("fleet-rr", replicas=1)
    a.create(p)
    deadline = time.monotonic() + WAIT_LIMIT
    while not fake_pulumi.locks(url, "fleet-rr"):
        assert time.monotonic() < deadline, "A's up never took the lock"
        time.sleep(0.1)
    seen = []
    while (status := b.status(p)).phase is not Phase.READY:  # B: the replica not running the up
        seen.append(status)
        assert time.monotonic() < deadline, f"still {status}"
        a.status(p)
        time.sleep(0.2)
    ups = [c for c in fake_pulumi.calls(url) if c[0] == "up"]
    assert len(ups) == 1, f"{len(ups)} ups for one attempt"
    assert any("is running on" in s.message for s in seen), seen


def test_the_pod_failure_thresholds_are_read_from_the_settings(backend: tuple[str, Path], make) -> None:
    """GRAPHFLEET_CRASH_LOOP_RESTARTS and GRAPHFLEET_UNSCHEDULABLE_SECONDS decide: a server that
    restarted 3 times and a pod Unschedulable for 10 min fail no fleet under 5 restarts and 1 h, and
    the Unschedulable one fails it under 5 restarts and 60 s (the crash loop still below its limit)."""
    import datetime as dt

    from tests.test_pod_failures import container, pod

    url, _ = backend
    fake_pulumi.script_faults(url, "fleet-thr", up=["hang"])
    cluster = ClusterPods()
    strict = make(pods=cluster, crash_loop_restarts=5, unschedulable_seconds=60)
    patient = make(pods=cluster, crash_loop_restarts=5, unschedulable_seconds=3600)
    p = provision("fleet-thr", replicas=2, partitions=2)
    strict.create(p)
    wait(strict, p, {Phase.UPDATING},
         lambda s: bool(fake_pulumi.stacks(url).get("fleet-thr", {}).get("pending")))
    cluster.found = {"fleet-thr-0": pod(container("CrashLoopBackOff", restarts=3, last=("Error", 1))),
                     "fleet-thr-1": pod(unschedulable_for=600, now=dt.datetime.now(dt.UTC))}
    assert patient.status(p).phase is Phase.UPDATING
    failed = strict.status(p)
    assert failed.phase is Phase.FAILED, failed
    assert "pod graphfleet/fleet-thr-1: Unschedulable for " in failed.message, failed.message
