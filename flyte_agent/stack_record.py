"""The stack record: what the state backend durably says about a fleet stack (names, tags, expiry,
retry counts, stale locks).

Everything the Pulumi provisioner decides from what it reads in the state backend lives here as plain
functions, so it is tested without a CLI. The stack is the record: its tags carry who owns it, which
execution it serves, when it expires and how many `up` attempts were made, so any connector replica
after any restart reaches the same decision.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infra.names import name_hash, shorten

# One Pulumi project holds every ephemeral fleet stack (distinct from the per-datacenter project).
PROJECT = "graphfleet-fleets"
# Pulumi stack names: letters, digits, '-', '_', '.'; at most 100 characters.
STACK_NAME_MAX = 100
# Pulumi tag names: at most 40 of [a-zA-Z0-9-_.:]; values at most 256 characters (pulumi/pulumi
# pkg/util/validation/stack.go validateStackTagName/ValidateStackTags, v3.259.0+14).
TAG_VALUE_MAX = 256
TAG_NAME = re.compile(r"^[a-zA-Z0-9\-_.:]{1,40}$")

TAG_MANAGED = "graphfleet:managed"
TAG_OWNER = "graphfleet:owner"
TAG_EXECUTION = "graphfleet:execution"
TAG_EXPIRES = "graphfleet:expires-at"
TAG_ATTEMPTS = "graphfleet:attempts"
TAG_LAST_ERROR = "graphfleet:last-error"
TAG_GAVE_UP = "graphfleet:gave-up"
# A hint that the stack is a tombstone (listings skip it); the fact is the destroy in its history.
TAG_DELETED = "graphfleet:deleted"
# A shared fleet (flyte_agent/leases.py): its share name, the spec its holders agree on (JSON in
# 256-character chunks `graphfleet:spec.0`, `.1`, ...) and one tag per lease, named by a hash of the
# holding workflow execution: "<expiry, epoch seconds> <execution>". The lease tags mirror the lease
# objects (replicas.StateFiles.leases), which decide: the CLI rewrites the whole tags file, so a concurrent
# writer can drop a lease tag or bring a released one back. TAG_EXPIRES is the latest lease's expiry.
TAG_SHARE = "graphfleet:share"
SPEC_PREFIX = "graphfleet:spec."
LEASE_PREFIX = "graphfleet:lease."
# How long a tombstone made for a fleet that did not exist yet is kept: longer than any create still
# queued on a replica could wait before it runs.
TOMBSTONE_SECONDS = 24 * 3600
# The tags that say who a stack belongs to: restored on every status read if lost (a failed write, or
# a concurrent `stack tag set`, which rewrites the whole tags file: pulumi pkg/backend/diy/stack_tags.go).
RECORD_TAGS = (TAG_MANAGED, TAG_OWNER, TAG_EXECUTION, TAG_EXPIRES)

_STACK_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_LOCK = re.compile(r"created by (?P<who>\S+)@(?P<host>\S+) \(pid (?P<pid>\d+)\) at (?P<when>\S+)")


def stack_name(provision_name: str) -> str:
    """The stack for a provision: the same name always maps to the same stack (a retried create adopts it)."""
    if not provision_name:
        raise ValueError("provision name is empty; the connector derives it from the task execution identity")
    return shorten(_STACK_CHARS.sub("-", provision_name), STACK_NAME_MAX)


def short_stack_name(listed: str) -> str:
    """`stack ls` may print `org/project/name` or `name`; the stack's own name is the last part."""
    return listed.rsplit("/", 1)[-1]


def clip(value: str, limit: int = TAG_VALUE_MAX) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def initial_tags(owner: str, execution: str, expires_at: float) -> dict[str, str]:
    """Tags set when a stack is first made; `attempts` starts at 0."""
    return {
        TAG_MANAGED: "true",
        TAG_OWNER: clip(owner or "unknown"),
        TAG_EXECUTION: clip(execution or "unknown"),
        TAG_EXPIRES: str(int(expires_at)),
        TAG_ATTEMPTS: "0",
    }


def missing_record(tags: Mapping[str, str], owner: str, execution: str,
                   expires: float) -> dict[str, str]:
    """The record tags to write so the stack says who owns it: those absent or (owner, execution)
    different. An expiry present is kept (it may have been renewed)."""
    want = initial_tags(owner, execution, expires)
    return {key: want[key] for key in RECORD_TAGS
            if key not in tags or (key in (TAG_OWNER, TAG_EXECUTION) and tags[key] != want[key])}


def shared_tags(share: str, shape: Mapping[str, Any], holder: str, expires_at: float) -> dict[str, str]:
    """The tags that make a stack a shared fleet held by `holder` until `expires_at`."""
    text = json.dumps(dict(shape), sort_keys=True, separators=(",", ":"))
    chunks = [text[i:i + TAG_VALUE_MAX] for i in range(0, len(text), TAG_VALUE_MAX)]
    return {TAG_SHARE: clip(share), **{f"{SPEC_PREFIX}{i}": chunk for i, chunk in enumerate(chunks)},
            **lease_tag(holder, expires_at)}


def spec_of(tags: Mapping[str, str]) -> dict[str, Any] | None:
    """The shared fleet's recorded spec; None if the tags hold none (or not all of it)."""
    chunks, i = [], 0
    while f"{SPEC_PREFIX}{i}" in tags:
        chunks.append(tags[f"{SPEC_PREFIX}{i}"])
        i += 1
    try:
        return dict(json.loads("".join(chunks))) if chunks else None
    except ValueError:
        return None


def lease_key(holder: str) -> str:
    return f"{LEASE_PREFIX}{name_hash(holder)}"


def lease_tag(holder: str, expires_at: float) -> dict[str, str]:
    return {lease_key(holder): clip(f"{int(expires_at)} {holder}")}


def leases_of(tags: Mapping[str, str]) -> dict[str, float]:
    """Every lease recorded on the stack: holder -> expiry (garbled tags are skipped)."""
    found = {}
    for key, value in tags.items():
        expiry, _, holder = value.partition(" ")
        if key.startswith(LEASE_PREFIX) and expiry.isdigit() and holder:
            found[holder] = float(expiry)
    return found


def check_tags(tags: Mapping[str, str]) -> None:
    """What the CLI would refuse: a bad tag name or an over-long value (a bug here, not user input)."""
    for key, value in tags.items():
        if not TAG_NAME.match(key) or len(value) > TAG_VALUE_MAX:
            raise ValueError(f"stack tag {key!r}={value!r} breaks Pulumi's tag rules (name: 1-40 of "
                             "[a-zA-Z0-9-_.:], value: at most 256 characters)")


def is_tombstone(history_kinds: list[str]) -> bool:
    """A stack whose history holds a destroy was deleted on purpose: no `up` may bring it back. The
    self-managed state backend appends the entry while the operation still holds the stack's lock (pulumi
    pkg/backend/diy/backend.go: apply() calls addToHistory before Destroy's deferred Unlock), so an
    `up` that takes the lock afterwards sees it."""
    return "destroy" in history_kinds


def attempts(tags: Mapping[str, str]) -> int:
    """`up` attempts recorded on the stack; a missing or garbled tag counts as none."""
    value = tags.get(TAG_ATTEMPTS, "0").partition(" ")[0]
    return int(value) if value.isdigit() else 0


_FAILED = "failed"


def attempt_tag(count: int, attempt_id: str, failed_at: float | None = None) -> str:
    """The attempts tag: how many `up` attempts count, the id of the last, which its `up`'s message
    (`attempt_message`) carries into the history, and when it failed, once it has (also where it failed
    before writing a history entry: before it took the stack's lock)."""
    return f"{count} {attempt_id}" + (f" {_FAILED} {failed_at:.0f}" if failed_at is not None else "")


def attempt_message(attempt_id: str) -> str:
    return f"graphfleet attempt {attempt_id}"


def _attempt_fields(tags: Mapping[str, str]) -> list[str]:
    """[count, id] or [count, id, "failed", epoch] (a tag written before failure times: [.., "failed"])."""
    return tags.get(TAG_ATTEMPTS, "").split()


def failed_at(tags: Mapping[str, str]) -> float | None:
    """When the last counted attempt failed (0 where a record says only that it failed), None if not."""
    fields = _attempt_fields(tags)
    if len(fields) < 3 or fields[2] != _FAILED:
        return None
    return float(fields[3]) if len(fields) > 3 and fields[3].isdigit() else 0.0


def retry_wait(tags: Mapping[str, str], backoff: float, now: float) -> float:
    """Seconds until the next `up` may start after a failed one: `backoff` doubled per failure so far,
    so a short API outage does not spend every attempt in a few seconds."""
    failed = failed_at(tags)
    if failed is None or backoff <= 0:
        return 0.0
    return max(0.0, failed + backoff * 2 ** max(attempts(tags) - 1, 0) - now)


def last_attempt_ended(tags: Mapping[str, str], history: list[tuple[str, str]]) -> bool:
    """Whether the last counted `up` attempt has ended (whatever its result): the state backend
    writes an operation's history entry when it ends (pulumi pkg/backend/diy/state.go addToHistory), so
    an attempt running, or dead with its process, has none. `history`: (kind, message) per entry.

    By its id, not by counting entries: a cancelled attempt (a drain) is given back yet leaves an entry,
    and counting made the next attempt look ended when it died. A record without an id (written by an
    older connector) is counted."""
    tried = attempts(tags)
    fields = _attempt_fields(tags)
    if tried == 0 or failed_at(tags) is not None:
        return True
    if len(fields) < 2:
        return sum(1 for kind, _ in history if kind == "update") >= tried
    return ("update", attempt_message(fields[1])) in history


def expires_at(tags: Mapping[str, str]) -> float | None:
    value = tags.get(TAG_EXPIRES, "")
    return float(value) if value.isdigit() else None


def is_expired(tags: Mapping[str, str], now: float) -> bool:
    """Only stacks graphfleet made, with an expiry that has passed; anything else is left alone."""
    expiry = expires_at(tags)
    return tags.get(TAG_MANAGED) == "true" and expiry is not None and expiry <= now


@dataclass(frozen=True)
class Lock:
    """A stack lock as the CLI reports it in a conflict error."""

    host: str
    pid: int
    created: str  # RFC 3339, as printed


def parse_lock(error_text: str) -> Lock | None:
    """The lock named in a `the stack is currently locked by ...` error, if any."""
    match = _LOCK.search(error_text)
    if match is None:
        return None
    return Lock(host=match["host"], pid=int(match["pid"]), created=match["when"])
