"""The seam every pulumi CLI call passes through: the real binary (or tests/fake_pulumi.py), with timeouts.

The Automation API runs the CLI through a `PulumiCommand` (its public `pulumi_command=` seam) and has
no timeout or cancel hook of its own. `TimedPulumiCommand` adds them:

- each call runs in its own session with a bound (long for up/destroy/refresh, short for the rest);
  a call past its bound is killed with all its plugins, and what a call that did not end well leaves
  in its session (the plugins of a CLI killed from outside, or crashed) is killed then: the CLI starts
  each plugin in a process group of its own and only a live CLI stops them, so an orphaned provider
  otherwise kept awaiting its objects for up to ~15 minutes (docs/external-contracts.md);
- every running call is in one process table, one entry per call (not per stack: a `stack tag ls`
  running beside an `up` must not hide the `up`), so `interrupt(stack)` reaches every operation on the
  stack. SIGINT is Pulumi's graceful cancel, which ends the operation and releases the lock.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import semver
from pulumi.automation import CommandResult, PulumiCommand
from pulumi.automation.errors import CommandError, create_command_error

from flyte_agent import metrics, stack_record

# Said of a CLI process a signal ended that graphfleet did not send (its timeout kill says so itself):
# killed with its pod, by the OOM killer, by an operator. What it was doing did not fail.
KILLED = "was killed by a signal from outside graphfleet"
# CLI subcommands that change a stack and may run as long as Kubernetes takes to converge.
LONG_COMMANDS = frozenset({"up", "destroy", "refresh", "preview", "cancel"})
# Said of a call killed at its bound (`run`).
TIMED_OUT = "timed out after"
# Said of a long operation asked for after `close()`: it was never started, so it did not fail either.
NOT_STARTED = "was not started: the connector is shutting down"
# Operations `interrupt()` stops: those that hold the stack's lock while they change the world.
_INTERRUPTIBLE = frozenset({"up", "destroy", "refresh", "preview"})
# Self-managed stack tags exist since 3.211 (the record lives in them); the `stack output --json` and
# `stack history --json` shapes used here are older.
MINIMUM_VERSION = semver.VersionInfo(3, 211, 0)
# Set (to anything) to skip the version check, as the Automation API allows: pulumi 3.272.0
# sdk/python/lib/pulumi/automation/_env.py (the name), _cmd.py PulumiCommand.__init__ (`is not None`).
SKIP_VERSION_CHECK_ENV = "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK"
_ERROR_TEXT_LINES = 4
_KILL_GRACE_SECONDS = 10


class TimedPulumiCommand(PulumiCommand):
    """`PulumiCommand` with a bound on every call and a table of the running ones."""

    def __init__(self, command: str, long_timeout: float, short_timeout: float) -> None:
        # Not PulumiCommand.__init__: it takes a root dir (`<root>/bin/pulumi`) and runs `pulumi
        # version` without a bound; the version check is redone here, through run().
        self.command = command
        self.long_timeout = long_timeout
        self.short_timeout = short_timeout
        self._running: dict[int, tuple[str | None, str, subprocess.Popen[str]]] = {}
        self._stack_timeouts: dict[str, float] = {}
        self._lock = threading.Lock()
        self._closed = False
        found = self.run(["version"], os.getcwd(), {}).stdout.strip().removeprefix("v")
        try:
            self.version: semver.VersionInfo | None = semver.VersionInfo.parse(found)
        except ValueError:
            self.version = None  # a development build: trusted, as the Automation API does
        opt_out = os.environ.get(SKIP_VERSION_CHECK_ENV) is not None
        if not opt_out and self.version is not None and self.version.compare(MINIMUM_VERSION) < 0:
            raise RuntimeError(f"{command} is pulumi {found}; graphfleet needs {MINIMUM_VERSION} or later "
                               "(self-managed stack tags); set GRAPHFLEET_PULUMI_COMMAND to a newer CLI")

    def run(self, args: list[str], cwd: str, additional_env: Mapping[str, str],
            on_output: Callable[[str], Any] | None = None,
            on_error: Callable[[str], Any] | None = None) -> CommandResult:
        args = args if "--non-interactive" in args else ["--non-interactive", *args]
        stack, subcommand = stack_arg(args), subcommand_of(args)
        timeout = self.short_timeout
        if subcommand in LONG_COMMANDS:
            timeout = self._stack_timeouts.get(stack or "", self.long_timeout)
        if subcommand in LONG_COMMANDS and self._closed:
            refused = f"error: graphfleet: `pulumi {' '.join(args[1:3])}` {NOT_STARTED}"
            raise create_command_error(CommandResult(stdout="", stderr=refused, code=-1))
        env = {**os.environ, **additional_env, "PULUMI_AUTOMATION_API": "true",
               "PULUMI_SKIP_UPDATE_CHECK": "true"}
        with subprocess.Popen([self.command, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) as process:
            with self._lock:
                self._running[process.pid] = (stack, subcommand, process)
            timed_out = False
            try:
                stdout, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_session(process)
                stdout, stderr = process.communicate()
                stderr += (f"\nerror: graphfleet: `pulumi {' '.join(args[1:3])}` {TIMED_OUT} "
                           f"{timeout:g}s and was killed; raise operation_timeout_seconds if Kubernetes "
                           "needs longer")
            finally:
                if process.poll() != 0:
                    # A CLI that ends well stops its plugins; one killed or crashed leaves them orphaned.
                    kill_session(process, grace=0)
                with self._lock:
                    self._running.pop(process.pid, None)
        for line in stdout.splitlines():
            if on_output:
                on_output(line)
        for line in stderr.splitlines():
            if on_error:
                on_error(line)
        if process.returncode < 0 and not timed_out:
            stderr += (f"\nerror: graphfleet: `pulumi {' '.join(args[1:3])}` {KILLED} "
                       f"({signal.Signals(-process.returncode).name})")
        result = CommandResult(stdout=stdout, stderr=stderr, code=process.returncode)
        if subcommand in LONG_COMMANDS:
            outcome = "timed_out" if timed_out else "succeeded" if result.code == 0 else "failed"
            metrics.PULUMI_OPERATIONS.labels(subcommand, outcome).inc()
        if result.code != 0:
            raise create_command_error(result)
        return result

    def close(self, grace: float) -> None:
        """Start no new long operation; cancel the running ones (SIGINT: Pulumi's graceful cancel, which
        releases the lock) and kill the sessions of those still running after `grace` seconds (a CLI
        that ignores the cancel leaves its lock to a dead-holder check). Short calls still run: each is
        bounded by its own timeout, and a cancelled attempt is given back with one."""
        with self._lock:
            self._closed = True
        self.interrupt()
        deadline = time.monotonic() + grace
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            left = [p for _, sub, p in self._running.values() if sub in LONG_COMMANDS]
        for process in left:
            kill_session(process, grace=0)

    def set_timeout(self, stack: str, seconds: float) -> None:
        """Bound long operations on `stack` by `seconds` instead of the default."""
        with self._lock:
            self._stack_timeouts[stack] = seconds

    def running(self, stack: str | None = None) -> list[tuple[str | None, str, int]]:
        """(stack, subcommand, pid) of every call running now, or of those on `stack`."""
        with self._lock:
            return [(s, sub, p.pid) for s, sub, p in self._running.values() if stack is None or s == stack]

    def interrupt(self, stack: str | None = None, sig: int = signal.SIGINT) -> int:
        """Send `sig` (SIGINT: Pulumi's graceful cancel) to every running operation on `stack` (every
        stack when None); returns how many were signalled."""
        with self._lock:
            targets = [p for s, sub, p in self._running.values()
                       if sub in _INTERRUPTIBLE and (stack is None or s == stack)]
        signalled = 0
        for process in targets:
            if process.poll() is None:
                process.send_signal(sig)
                signalled += 1
        return signalled


def subcommand_of(args: Sequence[str]) -> str:
    return next((a for a in args if not a.startswith("-")), "")


def stack_arg(args: Sequence[str]) -> str | None:
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--stack":
            return value
    return None


def session_members(sid: int) -> list[int]:
    """The pids of the processes in session `sid` (field 6 of /proc/<pid>/stat; proc(5))."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) == sid:
                members.append(int(stat.parent.name))
    return members


def kill_session(process: subprocess.Popen[str], grace: float = _KILL_GRACE_SECONDS) -> None:
    """End the call's whole session: the CLI and every plugin it started (each in a process group of
    its own, so not reached through the CLI's group). SIGTERM first when `grace` > 0, then SIGKILL to
    whatever is left."""
    if grace > 0 and process.poll() is None:
        for pid in session_members(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    for pid in session_members(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cli_output(err: BaseException) -> str:
    """What the CLI printed (the Automation API's errors keep it; others have only a message)."""
    stderr, stdout = getattr(err, "stderr", None), getattr(err, "stdout", None)
    return f"{stderr}\n{stdout}" if stderr is not None else str(err)


def interrupted(err: BaseException) -> bool:
    """A CLI call that did not fail on its own: killed from outside, or at its bound. What it read or
    did is unknown, not wrong; asking again is the answer."""
    return isinstance(err, CommandError) and any(mark in cli_output(err) for mark in (KILLED, TIMED_OUT))


# A resource's block in the CLI's "Diagnostics:" section: `  <type> (<name>):`, its lines indented below.
_DIAGNOSTIC = re.compile(r"^  (\S+) \((.+)\):$")
# How the kubernetes provider prefixes a failed operation's cause.
_PROVIDER_PREFIX = re.compile(
    r'^error: resource "[^"]*" was not successfully \w+ by the Kubernetes API server: ')
# ...the link it appends to a field conflict, and the line that then names the managers and fields
# (pulumi-kubernetes v4.32.0 provider/pkg/await/await.go handleSSAErr).
_LINK = re.compile(r", see https?://\S+ for troubleshooting help$")
_APPLY_CONFLICT = re.compile(r'^The resource managed by field manager "[^"]*" had an apply conflict: ')


def resource_errors(text: str) -> list[str]:
    """Each failed resource's first error from the CLI's "Diagnostics:" section, as `<Kind> <name>: <cause>`:
    the provider's cause without its URN preamble (which alone could fill a stack tag) or its link, with
    the lines that continue it (a field conflict's "conflict with <manager>: <field>") but not the advice
    after the blank line."""
    errors: list[str] = []
    resource, cause = None, ""
    for line in [*text.partition("\nDiagnostics:\n")[2].splitlines(), ""]:
        if cause and line.strip():
            cause += "; " + _APPLY_CONFLICT.sub("", line.strip())
            continue
        if cause:
            errors.append(f"{resource}: {cause}")
            resource, cause = None, ""  # the first error of each: what follows is the provider's advice
        header = _DIAGNOSTIC.match(line)
        if header:
            kind = header.group(1).rsplit(":", 1)[-1]
            resource = None if header.group(1) == "pulumi:pulumi:Stack" else f"{kind} {header.group(2)}"
        elif resource and line.strip().startswith("error:"):
            cause = _LINK.sub("", _PROVIDER_PREFIX.sub("", line.strip()).removeprefix("error: "))
        elif line and not line.startswith(" "):
            break  # "Resources:", the summary after the diagnostics
    return errors


def error_text(err: BaseException) -> str:
    """What a user needs of a CLI failure, clipped to fit a stack tag: the failed resources' causes, else
    the `error:` lines."""
    text = cli_output(err) if isinstance(err, CommandError) else str(err)
    found = resource_errors(text)
    if not found:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        found = [line for line in lines if "error" in line.lower()] or lines
    return stack_record.clip(" | ".join(found[-_ERROR_TEXT_LINES:]) or type(err).__name__)
