"""A fake `pulumi` CLI for the Automation API seam: the calls graphfleet makes, over a file-backed state.

It is run as a real executable (through a two-line shell wrapper, see `install()`), so the
provisioner's `TimedPulumiCommand` starts, times out and kills it like the real binary, and two
processes (two connector replicas, or a connector and its successor) share one state backend.

State lives under the `file://` directory of `PULUMI_BACKEND_URL`, in `fake/state.json`, guarded by
an flock: per stack its tags, history (newest last), resources, pending operations and outputs.
Stack locks are the real state backend's files (pulumi pkg/backend/diy/lock.go, v3.274.0): `up`, `destroy`,
`refresh` and `stack rm` write `.pulumi/locks/organization/<project>/<stack>/<uuid>.json` =
`{pid, username, hostname, timestamp}` (hostname is the process's, os.Hostname()) and delete it when they
end; any other file in that folder refuses the lock, with the real CLI's wording (so the Automation API
raises `ConcurrentUpdateError`). A process that dies while holding one leaves it behind, and `cancel`
deletes every file in the folder, whoever wrote it (backend.go CancelCurrentUpdate).

`up` with `--client=ADDR` runs the inline program for real: like the CLI, it serves a resource
monitor and an engine over gRPC and calls the Automation API's language host at ADDR. The monitor
echoes every resource's inputs as its outputs (what Kubernetes returns for declarative objects), so
the stack outputs are what GraphDataService computes, not synthesized.

The state backend also keeps the cluster: the Kubernetes objects (`kind:namespace/name`) that programs
created, which outlive a stack's state when `refresh --clear-pending-creates` drops pending creates.
Pending operations are kept as the real deployment's `pending_operations` (`{"resource", "type":
"creating"}`, the resource without an id: its create never returned). Like the real CLI, `up` and
`destroy` warn about them and carry on, and keep every pending create in the state they write
(pulumi pkg/resource/deploy/deployment_executor.go printPendingOperationsWarning and
pkg/backend/journal.go "propagate them to the new snapshot", pkg/v3 v3.274.0); only `refresh
--clear-pending-creates` drops them (pkg/cmd/pulumi/operations/refresh.go). `stack export`/`stack
import` read and replace the state, the import under the stack's lock (pkg/backend/diy/backend.go
ImportDeployment).
Like pulumi-kubernetes >= 4.29 (PR 4278, `provider/pkg/provider/provider.go` Create), creating an
object that exists and is not in the stack's state fails with AlreadyExists unless the stack's
kubernetes provider sets `upsertExistingObjects`; destroy deletes the state's objects from it.
Field managers (pulumi-kubernetes v4.32.0 server-side-apply mode, the default): the cluster records per
object its manager and its manifest as the apiserver stores it. A plain create POSTs under the static
manager `pulumi-kubernetes` (an Update operation); an upsert applies under the resource's own
`pulumi-kubernetes-<8 hex>`, chosen at Create (provider/pkg/await/await.go Creation, provider.go
fieldManagerName). The apiserver refuses an apply without force whose value for a field the object's
manager set differs from the stored one, and the resource fails with the provider's wording
(k8s.io/apimachinery pkg/util/managedfields/internal/conflict.go getConflictMessage, v0.33.13; await.go
handleSSAErr, provider.go Create). `fieldRef` is atomic, compared whole, and stored with `apiVersion:
v1` when omitted (k8s.io/api core/v1 ObjectFieldSelector `+structType=atomic`; k8s.io/kubernetes
pkg/apis/core/v1/defaults.go SetDefaults_ObjectFieldSelector, v1.33.13, the fixture's apiserver), so a
short one applied again by another manager conflicts. The omitempty booleans we could render `false`
never reach the apiserver: the provider's Check round-trips inputs of built-in kinds through their
k8s.io/api types, which drops them (provider.go normalizeInputs, clients/unstructured.go Normalize), so
they are neither stored nor in conflict. With force (the provider's `enablePatchForce` or the object's
`pulumi.com/patchForce: "true"`, await.go patchForce) the apply wins and the object takes the new
manager. One manager per object: the last to create it (the apiserver would share the fields both set
alike); an update keeps it, and conflicts on update are not modelled. tests/test_pulumi_field_managers.py
runs each of these against the real engine.

Every call is appended to `fake/calls.jsonl`. Faults are scripted per stack in `fake/faults.json`:
`{"<stack>": {"up": ["fail:<text>", "hang", "ok"], "destroy": ["fail:<text>"]}}`, consumed in order;
`hang` registers the resources (as pending creates) and then sleeps until cancelled (SIGINT/SIGTERM,
see `Cancelled`) or killed, like an `up` waiting for a StatefulSet that never becomes ready; `wedge`
does the same but ignores SIGINT/SIGTERM (only SIGKILL ends it), which leaves a stale lock.
`{"up-start": ["die"]}` SIGKILLs an `up` before it takes the lock (`{"history": ["die"]}` a `stack
history`), and `fail:<text>` fails it there; `kill-connector-when-free` SIGKILLs it and the connector
process that started it, at the first `up` that finds the stack unlocked.
`sleep:<seconds>;<fault>` holds the stack's lock that long first, like a destroy waiting for pods to
terminate (`sleep:5;ok`, `sleep:5;fail:...`).
`until:<path>;<fault>` holds it until the file `path` exists (at most 120 s), so a test decides when
the operation ends instead of racing a delay against its own polling.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import re
import secrets
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

VERSION = "3.272.0"
_TIME = "%Y-%m-%dT%H:%M:%S.000Z"
_EXIT_ERROR = 255
# An `up-start` fault: SIGKILL the calling connector process and this CLI, once the stack has no lock
# file (the connector has settled the locks and is starting its own `up`).
_KILL_WHEN_FREE = "kill-connector-when-free"


class CliError(Exception):
    pass


class Cancelled(CliError):
    """SIGINT or SIGTERM during an operation: like the real CLI's first signal (pulumi
    pkg/backend/cancellation_scope.go, v3.259.0+14, commit 1b5949891b), the operation is cancelled
    gracefully: it ends as failed in the history and its lock is released (pkg/backend/diy/backend.go:
    `defer b.Unlock`)."""


def _cancel_on_signal() -> None:
    def cancel(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second signal terminates, as in the CLI
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # The real CLI's notice on stdout (cancellation_scope.go, v3.274.0), which the connector reads.
        print("^C received; cancelling. If you would like to terminate immediately, press ^C again."
              if signum == signal.SIGINT else
              "SIGTERM received; cancelling. If you would like to terminate immediately, send SIGTERM again.",
              flush=True)
        raise Cancelled(f"update canceled ({signal.Signals(signum).name} received)")

    signal.signal(signal.SIGINT, cancel)
    signal.signal(signal.SIGTERM, cancel)


def install(directory: Path) -> Path:
    """Write an executable `pulumi` in `directory` that runs this fake; returns its path."""
    path = directory / "pulumi"
    path.write_text(f"#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} \"$@\"\n")
    path.chmod(0o755)
    return path


def state_dir(backend_url: str) -> Path:
    if not backend_url.startswith("file://"):
        raise CliError(f"the fake CLI supports file:// backends only, got {backend_url!r}")
    return Path(backend_url.removeprefix("file://")) / "fake"


# -- state --------------------------------------------------------------------------------------

class StateBackend:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def state(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write of the whole state under an exclusive lock."""
        with open(self.root / "state.lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            path = self.root / "state.json"
            data = json.loads(path.read_text()) if path.exists() else {"stacks": {}}
            yield data
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(path)

    def read(self) -> dict[str, Any]:
        with self.state() as data:
            return data

    def next_fault(self, stack: str, op: str, when: Callable[[str], bool] = lambda fault: True) -> str:
        """The op's next scripted fault, after its scripted delay (`sleep:` or `until:`) has passed; a
        fault for which `when` is false stays queued and this call gets "ok"."""
        fault = self._pop_fault(stack, op, when)
        if fault.startswith("sleep:"):
            seconds, _, fault = fault.removeprefix("sleep:").partition(";")
            time.sleep(float(seconds))
        elif fault.startswith("until:"):
            gate, _, fault = fault.removeprefix("until:").partition(";")
            deadline = time.monotonic() + 120
            while not Path(gate).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return fault or "ok"

    def _pop_fault(self, stack: str, op: str, when: Callable[[str], bool]) -> str:
        with open(self.root / "state.lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            path = self.root / "faults.json"
            faults = json.loads(path.read_text()) if path.exists() else {}
            queue = faults.get(stack, {}).get(op, [])
            fault = queue.pop(0) if queue and when(queue[0]) else "ok"
            _write_whole(path, json.dumps(faults))
            return fault

    def log_call(self, args: list[str]) -> None:
        self._append("calls.jsonl", {"pid": os.getpid(), "args": args})

    def log_event(self, event: str, stack: str) -> None:
        self._append("events.jsonl", {"event": event, "stack": stack})

    def _append(self, file: str, record: dict[str, Any]) -> None:
        with open(self.root / file, "a") as out:
            fcntl.flock(out, fcntl.LOCK_EX)
            out.write(json.dumps(record) + "\n")


def _write_whole(path: Path, text: str) -> None:
    """A killed process leaves the old file or the new one, never half of one: the diy backend's file
    bucket (gocloud fileblob WriteAll) writes a temporary file and renames it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def calls(backend_url: str) -> list[list[str]]:
    """Every CLI call so far, in order, without the global `--non-interactive` flag."""
    path = state_dir(backend_url) / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["args"] for line in path.read_text().splitlines()]


def events(backend_url: str) -> list[tuple[str, str]]:
    """`("lock", stack)` when an operation takes a stack's lock, `("unlock", stack)` when it ends."""
    path = state_dir(backend_url) / "events.jsonl"
    if not path.exists():
        return []
    return [(r["event"], r["stack"]) for r in map(json.loads, path.read_text().splitlines())]


def script_faults(backend_url: str, stack: str, **ops: list[str]) -> None:
    root = state_dir(backend_url)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "faults.json"
    faults = json.loads(path.read_text()) if path.exists() else {}
    faults.setdefault(stack, {}).update(ops)
    _write_whole(path, json.dumps(faults))


def cluster(backend_url: str) -> dict[str, dict[str, Any]]:
    """The Kubernetes objects that exist, `type:namespace/name` -> `{manager, operation, manifest, stack}`
    (`stack`: the stack whose `up` made it, for a test's accounting; the real cluster has no such field)."""
    return dict(StateBackend(state_dir(backend_url)).read().get("cluster", {}))


def stacks(backend_url: str) -> dict[str, Any]:
    path = state_dir(backend_url) / "state.json"
    return json.loads(path.read_text())["stacks"] if path.exists() else {}


# -- the CLI ------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(UTC).strftime(_TIME)


def _flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _stack_of(args: list[str]) -> str:
    name = _flag(args, "--stack") or (args[args.index("--") + 1] if "--" in args else None)
    if not name:
        raise CliError("no stack selected; pass --stack")
    return name


def _get(data: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in data["stacks"]:
        raise CliError(f"no stack named '{name}' found")
    stack: dict[str, Any] = data["stacks"][name]
    return stack


PROJECT = "graphfleet-fleets"  # the Automation API's project (flyte_agent.stack_record.PROJECT)


def lock_dir(backend_url: str, stack: str) -> Path:
    """Where the self-managed state backend keeps a stack's lock files (pulumi pkg/backend/diy/lock.go
    stackLockDir: `.pulumi/locks/` + the stack's fully qualified name, v3.274.0)."""
    return Path(backend_url.removeprefix("file://")) / ".pulumi" / "locks" / "organization" / PROJECT / stack


# The file:// state backend writes through gocloud's fileblob, which keeps each blob's attributes in a sidecar
# file `<blob>.attrs`, deletes it with the blob, and leaves it out of listings (gocloud.dev
# blob/fileblob/fileblob.go, attrs.go `attrsExt`; gocloud.dev v0.46.1-0.20260810195832-b5401c07b5f1, as the
# pulumi CLI v3.274.0 builds with).
ATTRS = ".attrs"


def _delete_blob(path: Path) -> None:
    path.unlink(missing_ok=True)
    Path(f"{path}{ATTRS}").unlink(missing_ok=True)


def locks(backend_url: str, stack: str) -> list[dict[str, Any]]:
    """The stack's lock files' contents, each with its `path`."""
    folder = lock_dir(backend_url, stack)
    return [{**json.loads(f.read_text()), "path": str(f)} for f in sorted(folder.glob("*.json"))]


def _conflict(backend_url: str, name: str, held: list[dict[str, Any]]) -> CliError:
    """diy/lock.go checkForLock's error, one line per lock file (v3.274.0)."""
    lines = [f"\n  file://{lock['path']}: created by {lock['username']}@{lock['hostname']} "
             f"(pid {lock['pid']}) at {lock['timestamp'][:19]}Z" for lock in held]
    return CliError(
        f"the stack is currently locked by {len(held)} lock(s). Either wait for the other process(es) to "
        "end or delete the lock file with `pulumi cancel`." + "".join(lines))


class Cli:
    def __init__(self, state_backend: StateBackend, backend_url: str) -> None:
        self.state_backend = state_backend
        self.url = backend_url
        self.lock_id = str(uuid.uuid4())  # one per CLI process, like the diy backend's lockID

    def run(self, args: list[str]) -> str:
        words = [a for a in args if not a.startswith("-")]
        head = words[:3] if words[:1] == ["stack"] else words[:1]
        if head == ["version"]:
            return f"v{VERSION}"
        if head[:2] == ["stack", "select"]:
            with self.state_backend.state() as data:
                _get(data, _stack_of(args))
            return ""
        if head[:2] == ["stack", "init"]:
            return self.init(words[2], args)
        if head[:2] == ["stack", "ls"]:
            return self.ls()
        if head[:2] == ["stack", "rm"]:
            return self.rm(words[-1], "--force" in args)
        if head[:2] == ["stack", "tag"]:
            return self.tag(words[2], words[3:], _stack_of(args))
        if head[:2] == ["stack", "output"]:
            with self.state_backend.state() as data:
                return json.dumps(_get(data, _stack_of(args))["outputs"])
        if head[:2] == ["stack", "history"]:
            return self.history(_stack_of(args), _flag(args, "--page-size"))
        if head[:2] == ["stack", "export"]:
            with self.state_backend.state() as data:
                stack = _get(data, _stack_of(args))
                return json.dumps({"version": 3, "deployment": {
                    "resources": stack["resources"], "pending_operations": stack["pending"]}})
        if head[:2] == ["stack", "import"]:
            return self.import_(_stack_of(args), Path(_flag(args, "--file") or ""))
        if head == ["up"]:
            return self.up(_stack_of(args), _flag(args, "--client"), _flag(args, "--message") or "")
        if head == ["destroy"]:
            self._warn_pending(_stack_of(args))
            return self.locked_op(_stack_of(args), "destroy", self._destroyed)
        if head == ["refresh"]:
            clear = "--clear-pending-creates" in args
            return self.locked_op(_stack_of(args), "refresh", lambda s, _: self._refreshed(s, clear))
        if head == ["cancel"]:
            with self.state_backend.state() as data:
                _get(data, _stack_of(args))
                for lock in locks(self.url, _stack_of(args)):  # every lock file, whoever holds it
                    _delete_blob(Path(lock["path"]))
            return "The currently running update has been canceled!"
        raise CliError(f"the fake pulumi does not implement {' '.join(args)!r}; add it to fake_pulumi.py")

    def init(self, name: str, args: list[str]) -> str:
        has_passphrase = any(os.environ.get(v) for v in ("PULUMI_CONFIG_PASSPHRASE",
                                                         "PULUMI_CONFIG_PASSPHRASE_FILE"))
        if _flag(args, "--secrets-provider") == "passphrase" and not has_passphrase:
            raise CliError("passphrase must be set with PULUMI_CONFIG_PASSPHRASE or "
                           "PULUMI_CONFIG_PASSPHRASE_FILE environment variables")
        provider = _flag(args, "--secrets-provider") or "passphrase"
        with self.state_backend.state() as data:
            if name in data["stacks"]:
                raise CliError(f"stack '{name}' already exists")
            data["stacks"][name] = {"tags": {}, "history": [], "resources": [], "pending": [],
                                    "outputs": {}, "secretsProvider": provider}
        # Like the CLI, the stack's settings go to Pulumi.<stack>.yaml beside the project's Pulumi.yaml
        # (the Automation API's work dir), not to the state backend.
        project = Path("Pulumi.yaml")
        if project.exists() and "graphfleet-fleets" in project.read_text():
            Path(f"Pulumi.{name}.yaml").write_text(f"secretsprovider: {provider}\n")
        return f"Created stack '{name}'"

    def check_secrets_manager(self, name: str) -> None:
        """An operation needs the stack's secrets manager. The CLI takes it from the work dir's
        Pulumi.<stack>.yaml; without one (a fresh work dir) it falls back to the state's manager only
        with PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER, else to a passphrase manager, which cannot open a
        KMS-encrypted state (pulumi pkg/cmd/pulumi/stack/secrets.go GetSecretsManager,
        sdk/go/common/env/env.go FallbackToStateSecretsManager; v3.259.0+14, commit 1b5949891b)."""
        with self.state_backend.state() as data:
            provider = _get(data, name).get("secretsProvider", "passphrase")
        local = Path(f"Pulumi.{name}.yaml")
        if provider == "passphrase" or (local.exists() and provider in local.read_text()):
            return
        if os.environ.get("PULUMI_FALLBACK_TO_STATE_SECRETS_MANAGER", "").lower() in ("1", "true"):
            return
        raise CliError(f"stack {name}'s secrets are encrypted by {provider}, and this work dir has no "
                       f"Pulumi.{name}.yaml naming it: passphrase must be set with PULUMI_CONFIG_PASSPHRASE "
                       "or PULUMI_CONFIG_PASSPHRASE_FILE environment variables")

    def ls(self) -> str:
        with self.state_backend.state() as data:
            rows = []
            for name, stack in sorted(data["stacks"].items()):
                row = {"name": f"organization/graphfleet-fleets/{name}", "current": False,
                       "updateInProgress": bool(locks(self.url, name)),
                       "resourceCount": len(stack["resources"])}
                if stack["history"]:
                    row["lastUpdate"] = stack["history"][-1]["startTime"]
                rows.append(row)
        return json.dumps(rows)

    def rm(self, name: str, force: bool) -> str:
        with self.state_backend.state() as data:
            stack = _get(data, name)
            if stack["resources"] and not force:
                raise CliError(f"'{name}' still has resources; removal rejected. Possible actions:\n"
                               "- Make sure that 'pulumi destroy' has run successfully")
            # RemoveStack takes the stack's lock first (diy/backend.go, v3.274.0).
            if locks(self.url, name):
                raise _conflict(self.url, name, locks(self.url, name))
            del data["stacks"][name]
        return f"Stack '{name}' has been removed!"

    def tag(self, verb: str, rest: list[str], name: str) -> str:
        # `stack tag set/rm` loads the stack's whole tags file, changes one key and writes the whole
        # file back, with no lock (pulumi pkg/cmd/pulumi/stack/stack_tag.go: s.Tags() then
        # backend.UpdateStackTags; pkg/backend/diy/stack_tags.go saveStackTags: bucket.WriteAll of
        # every tag; v3.259.0+14, commit 1b5949891b). So two writers at once lose one's key: here the
        # read and the write are two steps too, and a scripted `tag <verb> <key>` fault (a delay or a
        # failure) falls between them.
        with self.state_backend.state() as data:
            tags = dict(_get(data, name)["tags"])
        if verb in ("get", "ls"):
            if verb == "ls":
                return json.dumps(tags)
            if rest[0] not in tags:
                raise CliError(f"stack tag '{rest[0]}' not found for stack '{name}'")
            return str(tags[rest[0]])
        if verb not in ("set", "rm"):
            raise CliError(f"unknown stack tag verb {verb!r}")
        if verb == "rm" and rest[0] not in tags:
            raise CliError(f"stack tag '{rest[0]}' not found for stack '{name}'")
        if verb == "set":
            # pulumi pkg/util/validation/stack.go (v3.259.0+14): validateStackTagName, ValidateStackTags.
            if not re.match(r"^[a-zA-Z0-9\-_.:]{1,40}$", rest[0]):
                raise CliError(f"stack tag {rest[0]!r} is too long (max length 40 characters)"
                               if len(rest[0]) > 40 else "stack tag names may only contain alphanumerics, "
                               "hyphens, underscores, periods, or colons")
            if len(rest[1]) > 256:
                raise CliError(f"stack tag {rest[0]!r} value is too long (max length 256 characters)")
        fault = self.state_backend.next_fault(name, f"tag {verb} {rest[0]}")
        if fault.startswith("fail:"):
            raise CliError(fault.removeprefix("fail:"))
        if verb == "set":
            tags[rest[0]] = rest[1]
        else:
            del tags[rest[0]]
        with self.state_backend.state() as data:
            _get(data, name)["tags"] = tags  # the whole file, as read above plus one change
        return ""

    def import_(self, name: str, file: Path) -> str:
        deployment = json.loads(file.read_text())["deployment"]
        with self.state_backend.state() as data:
            stack = _get(data, name)
            held = locks(self.url, name)
            if held:
                raise _conflict(self.url, name, held)
            stack.update(resources=deployment.get("resources") or [],
                         pending=deployment.get("pending_operations") or [])
        return "Import complete."

    def history(self, name: str, page_size: str | None) -> str:
        """`stack history --json`, newest first, each entry with the real `updateInfoJSON`'s fields
        (no outputs, no tags; times to the second: pulumi pkg/cmd/pulumi/stack/stack_history.go
        `buildUpdatesJSON`, v3.274.0)."""
        if self.state_backend.next_fault(name, "history") == "die":
            os.kill(os.getpid(), signal.SIGKILL)  # a read killed from outside (its pod's OOM killer)
        with self.state_backend.state() as data:
            entries = list(reversed(_get(data, name)["history"]))
        return json.dumps(entries[: int(page_size)] if page_size else entries)

    def _begin(self, name: str, kind: str, message: str = "") -> None:
        """Take the stack's lock, or fail on a held lock. diy/lock.go Lock() checks for other lock
        files, writes its own and checks again; the state's flock makes those three steps one here."""
        with self.state_backend.state() as data:
            stack = _get(data, name)
            held = locks(self.url, name)
            if held:
                raise _conflict(self.url, name, held)
            mine = lock_dir(self.url, name) / f"{self.lock_id}.json"
            mine.parent.mkdir(parents=True, exist_ok=True)
            _write_whole(mine, json.dumps({"pid": os.getpid(), "username": pwd.getpwuid(os.getuid()).pw_name,
                                           "hostname": socket.gethostname(),
                                           "timestamp": datetime.now(UTC).isoformat()}))
            _write_whole(Path(f"{mine}{ATTRS}"), json.dumps({"user.metadata": None}))
            # `--message` is the entry's message (pulumi pkg/cmd/pulumi/operations/up.go `message` flag,
            # UpdateMetadata.Message; stack_history.go `updateInfoJSON.Message`, v3.274.0).
            stack["running"] = {"kind": kind, "startTime": _now(), "message": message, "environment": {},
                                "config": {}, "version": len(stack["history"]) + 1}
            self.state_backend.log_event("lock", name)

    def _end(self, name: str, ok: bool, change: Any = None, always: bool = False) -> None:
        with self.state_backend.state() as data:
            stack = _get(data, name)
            if change is not None and (ok or always):
                change(stack, data)
            # Like the DIY state backend, history records an operation only when it ends.
            entry = stack.pop("running")
            stack["history"].append({**entry, "result": "succeeded" if ok else "failed", "endTime": _now()})
            _delete_blob(lock_dir(self.url, name) / f"{self.lock_id}.json")
            self.state_backend.log_event("unlock", name)

    def locked_op(self, name: str, kind: str, change: Any) -> str:
        self.check_secrets_manager(name)
        self._begin(name, kind)
        _cancel_on_signal()
        try:
            fault = self.state_backend.next_fault(name, kind)
        except Cancelled:
            self._end(name, ok=False)
            raise
        if fault.startswith("fail:"):
            self._end(name, ok=False)
            raise CliError(fault.removeprefix("fail:"))
        self._end(name, ok=True, change=change)
        return f"{kind} complete"

    @staticmethod
    def _destroyed(stack: dict[str, Any], data: dict[str, Any]) -> None:
        # Only what the state holds is deleted; pending creates stay pending, their objects stay.
        for key in _objects(stack["resources"]):
            data.setdefault("cluster", {}).pop(key, None)
        stack.update(resources=[], outputs={})

    def _create_objects(self, name: str, resources: list[dict[str, Any]]) -> str | None:
        """The provider creates the program's objects as it runs; one that exists outside the stack's
        state fails with AlreadyExists unless the provider upserts, and an upsert may conflict with its
        manager. Returns the first failure's error, or None (then every object is made)."""
        upsert = _provider_sets(resources, "upsertExistingObjects")
        force = _provider_sets(resources, "enablePatchForce")
        with self.state_backend.state() as data:
            cluster = data.setdefault("cluster", {})
            known = set(_objects(_get(data, name)["resources"]))
            made = {}
            for key, resource in _objects(resources).items():
                applied = _normalized(resource["inputs"])
                record = cluster.get(key)
                if record and key in known:  # an update, under the object's own manager
                    made[key] = {**record, "manifest": _stored(applied)}
                    continue
                if record and not upsert:
                    type_, obj = key.rsplit(":", 1)
                    return (f'resource "{obj}" was not successfully created by the Kubernetes API server: '
                            f'{type_.rsplit(":", 1)[1]} "{obj}" already exists')
                # An upsert applies under the resource's own manager; a plain create POSTs.
                manager, operation = ((f"pulumi-kubernetes-{secrets.token_hex(4)}", "Apply") if upsert
                                      else ("pulumi-kubernetes", "Update"))
                annotations = applied.get("metadata", {}).get("annotations") or {}
                forced = force or annotations.get("pulumi.com/patchForce") == "true"
                conflicts = [] if record is None or forced else _conflicts(applied, record["manifest"])
                if conflicts:
                    return (f'resource "{resource["urn"]}" was not successfully created by the Kubernetes '
                            f"API server: {_SSA_CONFLICT_HELP}\nThe resource managed by field manager "
                            f'"{manager}" had an apply conflict: {_apply_failed(record, conflicts)}')
                made[key] = {"manager": manager, "operation": operation, "manifest": _stored(applied),
                             "stack": name}
            cluster.update(made)
        return None

    @staticmethod
    def _refreshed(stack: dict[str, Any], clear_pending_creates: bool) -> None:
        # The objects of cleared pending creates stay in the cluster (pulumi/pulumi
        # pkg/engine/refresh: --clear-pending-creates only edits the state).
        if clear_pending_creates:
            stack["pending"] = [op for op in stack["pending"] if op["type"] != "creating"]

    def _warn_pending(self, name: str) -> list[dict[str, Any]]:
        """The stack's pending operations, after the engine's warning about them (it carries on)."""
        with self.state_backend.state() as data:
            pending: list[dict[str, Any]] = _get(data, name)["pending"]
        if pending:
            print(f"warning: Attempting to deploy or update resources with {len(pending)} pending operations "
                  "from previous deployment.\n" + "".join(
                      f"  * {op['resource']['urn']}, interrupted while {op['type']}\n" for op in pending),
                  file=sys.stderr)
        return pending

    def up(self, name: str, client: str | None, message: str = "") -> str:
        self.check_secrets_manager(name)
        start = self.state_backend.next_fault(name, "up-start", when=lambda f: f != _KILL_WHEN_FREE
                                        or not locks(self.url, name))
        if start == "die":
            os.kill(os.getpid(), signal.SIGKILL)  # killed from outside before it took the lock (OOM, a pod)
        if start.startswith("fail:"):  # failed before it took the lock (plugins, secrets): no history
            raise CliError(start.removeprefix("fail:"))
        if start == _KILL_WHEN_FREE:  # the connector's pod dies, taking this CLI with it
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        self._begin(name, "update", message)
        _cancel_on_signal()
        base_pending = self._warn_pending(name)
        fault = self.state_backend.next_fault(name, "up")
        try:
            resources, outputs = run_program(client, name) if client else ([], {})
        except CliError:
            self._end(name, ok=False)
            raise
        if fault in ("hang", "wedge"):
            # The engine journals a create as pending before it asks the provider (pulumi
            # pkg/backend/journal.go): an object never exists without its pending create.
            with self.state_backend.state() as data:
                _get(data, name)["pending"] = base_pending + [
                    {"resource": {**r, "id": ""}, "type": "creating"} for r in resources if r["custom"]]
        failed = self._create_objects(name, resources)
        if failed:
            self._end(name, ok=False)
            raise CliError(failed)
        if fault in ("hang", "wedge"):
            if fault == "wedge":  # a CLI stuck where no signal reaches it: only SIGKILL ends it
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                while True:  # like an up waiting for pods that never become ready
                    time.sleep(1)
            except Cancelled:
                # The cancelled creates end as failed steps; the objects exist in the cluster and in
                # the state (pulumi-kubernetes records a create whose await failed, with its
                # initialization errors), so no pending operation remains.
                def created(stack: dict[str, Any], data: dict[str, Any]) -> None:
                    stack.update(resources=resources, pending=base_pending)

                self._end(name, ok=False, change=created, always=True)
                raise
        if fault.startswith("fail:"):
            # The program ran and the provider created its objects; what failed is the wait for them
            # (ImagePullBackOff, unschedulable pods): pulumi-kubernetes records such a create in the
            # state with its initialization errors, so the objects are there to destroy.
            def partial(stack: dict[str, Any], data: dict[str, Any]) -> None:
                stack.update(resources=resources)

            self._end(name, ok=False, change=partial, always=True)
            raise CliError(fault.removeprefix("fail:"))

        def commit(stack: dict[str, Any], data: dict[str, Any]) -> None:
            stack.update(resources=resources, outputs=outputs)

        self._end(name, ok=True, change=commit)
        return f"Update complete: {len(resources)} resources"


def _objects(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Kubernetes objects among a program's resources, by `type:namespace/name`."""
    return {f"{r['type']}:{r['id']}": r for r in resources
            if r["custom"] and r["type"].startswith("kubernetes:") and r.get("id")}


def _provider_sets(resources: list[dict[str, Any]], key: str) -> bool:
    """Whether the program's kubernetes provider sets the boolean `key` (`upsertExistingObjects`,
    `enablePatchForce`: both default false; the Python SDK sends them as JSON strings)."""
    return any(r["type"] == "pulumi:providers:kubernetes" and r["inputs"].get(key) in (True, "true")
               for r in resources)


# pulumi-kubernetes' wording of an apply conflict (provider/pkg/await/await.go handleSSAErr, v4.32.0).
_SSA_CONFLICT_HELP = ("server-side apply field conflict detected, see https://www.pulumi.com/registry/packages/"
                      "kubernetes/how-to-guides/managing-resources-with-server-side-apply/"
                      "#handle-field-conflicts-on-existing-resources for troubleshooting help")
# The omitempty booleans we could render `false`, by kind: k8s.io/api v0.36.1 (the provider's)
# core/v1 ServiceSpec.PublishNotReadyAddresses, scheduling/v1 PriorityClass.GlobalDefault.
_OMITEMPTY_FALSE = {"Service": ("spec", "publishNotReadyAddresses"), "PriorityClass": ("globalDefault",)}
# Atomic structs we render, compared whole (k8s.io/api core/v1 ObjectFieldSelector `+structType=atomic`).
_ATOMIC = ("fieldRef",)


def _normalized(inputs: dict[str, Any]) -> dict[str, Any]:
    """An object's inputs as the provider's Check leaves them: its round trip through the kind's
    k8s.io/api type drops omitempty zero values, here the `false` booleans we could render."""
    manifest: dict[str, Any] = json.loads(json.dumps(inputs))
    if manifest.get("kind") in _OMITEMPTY_FALSE:
        *parents, field = _OMITEMPTY_FALSE[manifest["kind"]]
        holder = manifest
        for key in parents:
            holder = holder.get(key) or {}
        if holder.get(field) is False:
            del holder[field]
    return manifest


def _stored(value: Any, key: str = "") -> Any:
    """An applied manifest as the apiserver stores it: `fieldRef` defaulted (`apiVersion: v1`)."""
    if isinstance(value, dict):
        stored = {k: _stored(v, k) for k, v in value.items()}
        return {"apiVersion": "v1", **stored} if key == "fieldRef" else stored
    if isinstance(value, list):
        return [_stored(item) for item in value]
    return value


def _named(value: Any) -> bool:
    """A list of named objects (containers, env): SSA merges it by name."""
    return isinstance(value, list) and all(isinstance(item, dict) and "name" in item for item in value)


def _conflicts(applied: Any, stored: Any, path: str = "") -> list[str]:
    """The fields, as SSA writes their paths, whose applied value differs from the stored one (fields
    the object's manager did not set are not stored here: they never conflict)."""
    if isinstance(applied, dict) and isinstance(stored, dict):
        found = []
        for key, value in applied.items():
            if key in _ATOMIC and key in stored:
                found += [f"{path}.{key}"] if value != stored[key] else []
            elif key in stored:
                found += _conflicts(value, stored[key], f"{path}.{key}")
        return found
    if _named(applied) and _named(stored):
        by_name = {item["name"]: item for item in stored}
        return [conflict for item in applied if item["name"] in by_name
                for conflict in _conflicts(item, by_name[item["name"]], f'{path}[name="{item["name"]}"]')]
    return [path] if applied != stored else []


def _apply_failed(record: dict[str, Any], conflicts: list[str]) -> str:
    """The apiserver's 409 message (managedfields/internal/conflict.go getConflictMessage, printManager;
    k8s.io/apimachinery v0.33.13): an Update operation's manager with its API version (and, as the real
    apiserver prints it, no time)."""
    owner = f'"{record["manager"]}"'
    if record["operation"] == "Update":
        owner += f' using {record["manifest"]["apiVersion"]}'
    if len(conflicts) == 1:
        return f"Apply failed with 1 conflict: conflict with {owner}: {conflicts[0]}"
    return f"Apply failed with {len(conflicts)} conflicts: conflicts with {owner}:\n" + "\n".join(
        f"- {path}" for path in conflicts)


# -- the engine side of an inline program -------------------------------------------------------

def run_program(client: str, stack: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Serve a resource monitor and engine, have the language host at `client` run the program."""
    import grpc
    from google.protobuf import empty_pb2, json_format, struct_pb2
    from pulumi.runtime.proto import (
        engine_pb2_grpc,
        language_pb2,
        language_pb2_grpc,
        resource_pb2,
        resource_pb2_grpc,
    )

    project = "graphfleet-fleets"
    stack_type = "pulumi:pulumi:Stack"
    resources: list[dict[str, Any]] = []
    outputs: dict[str, Any] = {}
    root: dict[str, str] = {}

    def make_urn(parent: str, type_: str, name: str) -> str:
        qualified = type_
        if parent:
            parent_type = parent.split("::")[2]
            if parent_type != stack_type:
                qualified = f"{parent_type}${type_}"
        return f"urn:pulumi:{stack}::{project}::{qualified}::{name}"

    class Monitor(resource_pb2_grpc.ResourceMonitorServicer):
        def SupportsFeature(self, request: Any, context: Any) -> Any:  # noqa: N802
            # No outputValues: inputs then arrive as plain values, which the echo returns as outputs.
            supported = request.id in ("secrets", "resourceReferences")
            return resource_pb2.SupportsFeatureResponse(hasSupport=supported)

        def RegisterResource(self, request: Any, context: Any) -> Any:  # noqa: N802
            urn = make_urn(request.parent, request.type, request.name)
            if request.type == stack_type:
                return resource_pb2.RegisterResourceResponse(urn=urn)
            inputs = json_format.MessageToDict(request.object)
            metadata = inputs.get("metadata") or {}
            if request.custom and "name" in metadata:
                id_ = f"{metadata.get('namespace', '')}/{metadata['name']}".lstrip("/")
            else:
                id_ = f"{request.name}-id" if request.custom else ""
            resources.append({"urn": urn, "type": request.type, "custom": bool(request.custom),
                              "inputs": inputs, "id": id_})
            return resource_pb2.RegisterResourceResponse(urn=urn, id=id_, object=request.object)

        def RegisterResourceOutputs(self, request: Any, context: Any) -> Any:  # noqa: N802
            if request.urn.split("::")[2] == stack_type:
                outputs.update(json_format.MessageToDict(request.outputs))
            return empty_pb2.Empty()

        def Invoke(self, request: Any, context: Any) -> Any:  # noqa: N802
            return resource_pb2.InvokeResponse(**{"return": struct_pb2.Struct()})

        def RegisterPackage(self, request: Any, context: Any) -> Any:  # noqa: N802
            return resource_pb2.RegisterPackageResponse(ref=f"{request.name}-{request.version}")

        def SignalAndWaitForShutdown(self, request: Any, context: Any) -> Any:  # noqa: N802
            return empty_pb2.Empty()

    class Engine(engine_pb2_grpc.EngineServicer):
        def Log(self, request: Any, context: Any) -> Any:  # noqa: N802
            print(request.message, file=sys.stderr)
            return empty_pb2.Empty()

        def GetRootResource(self, request: Any, context: Any) -> Any:  # noqa: N802
            from pulumi.runtime.proto import engine_pb2
            return engine_pb2.GetRootResourceResponse(urn=root.get("urn", ""))

        def SetRootResource(self, request: Any, context: Any) -> Any:  # noqa: N802
            from pulumi.runtime.proto import engine_pb2
            root["urn"] = request.urn
            return engine_pb2.SetRootResourceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    resource_pb2_grpc.add_ResourceMonitorServicer_to_server(Monitor(), server)
    engine_pb2_grpc.add_EngineServicer_to_server(Engine(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(client) as channel:
            reply = language_pb2_grpc.LanguageRuntimeStub(channel).Run(language_pb2.RunRequest(
                project=project, stack=stack, monitor_address=f"127.0.0.1:{port}",
                args=[f"127.0.0.1:{port}"], parallel=4, dryRun=False, organization="organization"))
    finally:
        server.stop(0)
    if reply.error:
        raise CliError(f"an unhandled error occurred: program failed:\n{reply.error}")
    return resources, outputs


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--non-interactive"]
    try:
        if args[:1] == ["version"]:
            print(f"v{VERSION}")
            return 0
        state_backend = StateBackend(state_dir(os.environ.get("PULUMI_BACKEND_URL", "")))
        state_backend.log_call(args)
        out = Cli(state_backend, os.environ.get("PULUMI_BACKEND_URL", "")).run(args)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return _EXIT_ERROR
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
