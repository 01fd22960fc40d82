"""What `pulumi up` would do to a datacenter when its stack file changes, told to a reviewer.

Objects are matched the way Pulumi matches them: by URN (the resource's type chain and logical
name), not by Kubernetes name, so an object whose name or namespace changes under the same URN is
a replace, and one whose URN changes is a delete plus a create. Each object gets an action:
create, delete, update or replace, and for patch resources (NodePatch: fields on an object that
exists before the stack) patch, unpatch or update. Whether a change replaces follows
pulumi-kubernetes' own table (`provider/pkg/provider/diff.go` `forceNew`, applied by
`convertPatchToDiff` in `provider.go`): a change at or under a listed field replaces the object, and
objects with fixed names are deleted before they are re-created.

Field paths name list items by their `name` (or `key`) rather than their index
(`containers[graph-engine].env[AWS_ENDPOINT_URL].value`), command-line flags by the flag before them
(`command[--replicas]`), JSON carried in a string is compared field by field, and multi-line text
line by line. Changes that cost data or availability get warnings.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.config import decoded_json
from infra.contract import env_name
from infra.policy import graph_server_command, pod_spec

Manifest = Mapping[str, Any]


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()

# pulumi-kubernetes provider/pkg/provider/diff.go (`forceNew`), for the apiVersions listed there.
# Every object also replaces on .metadata.name and .metadata.namespace; patch resources only on those.
_SELECTOR = (".spec.selector",)
FORCE_NEW: dict[tuple[str, str], tuple[str, ...]] = {
    ("apps/v1", "StatefulSet"): (".spec.podManagementPolicy", ".spec.revisionHistoryLimit", ".spec.selector",
                                 ".spec.serviceName", ".spec.volumeClaimTemplates"),
    ("apps/v1", "Deployment"): _SELECTOR,
    ("apps/v1", "DaemonSet"): _SELECTOR,
    ("batch/v1", "Job"): (".spec.completions", ".spec.parallelism", ".spec.selector", ".spec.template"),
    ("v1", "Service"): (".spec.clusterIP",),
    ("v1", "PersistentVolumeClaim"): (".spec.accessModes", ".spec.selector", ".spec.storageClassName",
                                      ".spec.volumeName"),
    # Secrets and ConfigMaps are immutable unless the provider's enableSecretMutable /
    # enableConfigMapMutable is on (default off).
    ("v1", "Secret"): (".type", ".stringData", ".data"),
    ("v1", "ConfigMap"): (".binaryData", ".data"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (".roleRef",),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): (".roleRef",),
    ("storage.k8s.io/v1", "StorageClass"): (".parameters", ".provisioner"),
}
IDENTITY = (".metadata.name", ".metadata.namespace")


@dataclass(frozen=True)
class StackObject:
    """One Kubernetes resource a stack declares."""

    urn: str                  # without project and stack: "<type chain>::<logical name>"
    type: str                 # the Pulumi type, e.g. "kubernetes:core/v1:NodePatch"
    manifest: Manifest

    @property
    def patch(self) -> bool:
        """A patch of an object that exists before the stack (NodePatch), not an object it creates."""
        return self.type.endswith("Patch")

    @property
    def key(self) -> str:
        meta = self.manifest.get("metadata") or {}
        namespace = meta.get("namespace")
        return f"{self.manifest.get('kind')}/{namespace + '/' if namespace else ''}{meta.get('name')}"


@dataclass(frozen=True)
class FieldChange:
    path: str                 # name-based, e.g. spec.template.spec.containers[graph-engine].image
    old: Any                  # ABSENT when added
    new: Any                  # ABSENT when removed
    replaces: bool = False

    def text(self) -> str:
        if isinstance(self.old, str) and isinstance(self.new, str) and ("\n" in self.old or "\n" in self.new):
            lines = difflib.unified_diff(self.old.splitlines(), self.new.splitlines(), lineterm="", n=1)
            body = "\n      ".join(list(lines)[2:])
            return f"{self.path}:{' (forces replace)' if self.replaces else ''}\n      {body}"
        replaces = " (forces replace)" if self.replaces else ""
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}{replaces}"


@dataclass(frozen=True)
class ObjectChange:
    action: str               # create | delete | update | replace | patch | unpatch
    key: str                  # Kind/namespace/name (the new one when it changes)
    old_key: str | None = None
    fields: tuple[FieldChange, ...] = ()

    @property
    def symbol(self) -> str:
        return {"create": "+", "delete": "-", "update": "~", "replace": "+-", "patch": "+",
                "unpatch": "-"}[self.action]


@dataclass(frozen=True)
class StackDiff:
    changes: list[ObjectChange]
    warnings: list[str] = field(default_factory=list)

    def count(self, *actions: str) -> int:
        return sum(c.action in actions for c in self.changes)


def _show(value: Any) -> str:
    if value is ABSENT:
        return "<absent>"
    return json.dumps(value, sort_keys=True)


def _segment(path: str, key: str) -> str:
    # Pulumi's own rendering: keys with dots, quotes or brackets are quoted in brackets.
    if any(c in key for c in '."[]/'):
        return f'{path}["{key}"]'
    return f"{path}.{key}" if path else key


def _list_key(items: Sequence[Any], other: Sequence[Any]) -> str | None:
    """The field that names every item of both lists uniquely (name, then key), if any."""
    for candidate in ("name", "key"):
        ok = True
        for side in (items, other):
            names = [i.get(candidate) if isinstance(i, Mapping) else None for i in side]
            if any(not isinstance(n, (str, int)) for n in names) or len(set(names)) != len(names):
                ok = False
        if ok:
            return candidate
    return None


def field_changes(old: Any, new: Any, path: str = "", raw: str = "") -> list[tuple[str, str, Any, Any]]:
    """(name-based path, raw path for the replace rules, old, new) of every changed leaf."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in sorted(old.keys() | new.keys()):
            found += field_changes(old.get(key, ABSENT), new.get(key, ABSENT), _segment(path, str(key)),
                                   f"{raw}.{key}")
        return found
    if isinstance(old, list) and isinstance(new, list):
        if old == new:
            return []
        by = _list_key(old, new)
        if by is not None:
            before = {str(i[by]): i for i in old}
            after = {str(i[by]): i for i in new}
            names = [*before, *(n for n in after if n not in before)]
            return [c for n in names for c in field_changes(before.get(n, ABSENT), after.get(n, ABSENT),
                                                           f"{path}[{n}]", raw)]
        if len(old) == len(new) and all(not isinstance(v, (Mapping, list)) for v in (*old, *new)):
            # A command line: name each argument by the flag before it.
            found = []
            for index, (a, b) in enumerate(zip(old, new, strict=True)):
                if a != b:
                    flag = new[index - 1] if index and str(new[index - 1]).startswith("-") else index
                    found.append((f"{path}[{flag}]", raw, a, b))
            return found
        if len(old) == len(new):
            return [c for i, (a, b) in enumerate(zip(old, new, strict=True))
                    for c in field_changes(a, b, f"{path}[{i}]", raw)]
        if all(not isinstance(v, (Mapping, list)) for v in (*old, *new)):
            # Items added to or removed from a list of values: name only those.
            return ([(f"{path}[-]", raw, v, ABSENT) for v in old if v not in new]
                    + [(f"{path}[+]", raw, ABSENT, v) for v in new if v not in old])
        return [(path, raw, old, new)]
    old_json, new_json = decoded_json(old), decoded_json(new)
    if isinstance(old, str) and isinstance(new, str) and all(isinstance(v, (Mapping, list))
                                                             for v in (old_json, new_json)):
        return field_changes(old_json, new_json, f"{path}(json)", raw)
    if old == new:
        return []
    return [(path, raw, old, new)]


def _replaces(manifest: Manifest, raw: str, patch: bool) -> bool:
    kind = (manifest.get("apiVersion", ""), manifest.get("kind", ""))
    rules = IDENTITY if patch else IDENTITY + FORCE_NEW.get(kind, ())
    return any(raw == rule or raw.startswith(rule + ".") for rule in rules)


def _compare(old: StackObject, new: StackObject) -> ObjectChange | None:
    fields = tuple(FieldChange(path, a, b, _replaces(new.manifest, raw, new.patch))
                   for path, raw, a, b in field_changes(old.manifest, new.manifest))
    if not fields:
        return None
    action = "replace" if any(f.replaces for f in fields) else "update"
    return ObjectChange(action, new.key, old.key if old.key != new.key else None, fields)


def diff_stacks(old: Iterable[StackObject], new: Iterable[StackObject]) -> StackDiff:
    """Every object change, in the new stack's order (deletions last), and the warnings."""
    before, after = {o.urn: o for o in old}, {o.urn: o for o in new}
    changes: list[ObjectChange] = []
    for urn, obj in after.items():
        if urn not in before:
            changes.append(ObjectChange("patch" if obj.patch else "create", obj.key))
        elif (change := _compare(before[urn], obj)) is not None:
            changes.append(change)
    changes += [ObjectChange("unpatch" if o.patch else "delete", o.key) for urn, o in before.items()
                if urn not in after]
    return StackDiff(changes, warnings(before, after, changes))


def _by_key(objects: Mapping[str, StackObject]) -> dict[str, StackObject]:
    return {o.key: o for o in objects.values()}


def _env(manifest: Manifest, name: str) -> str | None:
    for container in (pod_spec(manifest) or {}).get("containers", []):
        for env in container.get("env") or []:
            if env.get("name") == name:
                return str(env.get("value"))
    return None


def _server_flags(manifest: Manifest) -> dict[str, str]:
    command = graph_server_command(manifest) or []
    return {flag: command[i + 1] for i, flag in enumerate(command[:-1])
            if flag in ("--data-dir", "--replicas", "--partitions")}


def warnings(before: Mapping[str, StackObject], after: Mapping[str, StackObject],
             changes: Sequence[ObjectChange]) -> list[str]:
    """Changes that cost data or availability, one sentence each."""
    old, new = _by_key(before), _by_key(after)
    found: list[str] = []
    for change in changes:
        key = change.old_key or change.key
        gone = change.action in ("delete", "replace")
        obj = new.get(change.key) or old.get(key)
        kind = key.split("/", 1)[0]
        if gone and kind == "Namespace":
            found.append(f"{key} is {change.action}d: Kubernetes deletes every object in it, including "
                         f"ones this stack does not manage (the connector's ephemeral fleets, their "
                         f"running trainings' graphs) and the Secrets created there by hand")
        elif gone and kind == "StatefulSet" and obj is not None and graph_server_command(obj.manifest):
            outage = ("is down until it is re-created and has reloaded its graph"
                      if change.action == "replace" else "is removed")
            found.append(f"{key} is {change.action}d: the graph service {outage}; every training using it "
                         f"fails or stalls")
        elif gone and kind in ("StatefulSet", "Deployment"):
            found.append(f"{key} is {change.action}d (fixed names: delete first, then create): all its pods "
                         f"stop at once")
        elif gone and kind == "NodePool":
            found.append(f"{key} is {change.action}d: Karpenter drains and terminates every node it launched "
                         f"for this pool, with the training jobs on them")
        elif gone and kind in ("ClusterQueue", "ResourceFlavor", "LocalQueue"):
            found.append(f"{key} is {change.action}d: Kueue stops admitting to it, and workloads admitted "
                         f"through it lose their quota")
        elif change.action == "unpatch" and kind == "Node":
            found.append(f"{key}: the patch is removed, and with it the labels it set (the node leaves its "
                         f"GPU pool)")
        elif change.action == "unpatch" and kind == "Namespace":
            found.append(f"{key}: the patch is removed, and with it the Pod Security labels it set; the "
                         f"namespace and everything in it stay, unmanaged")
        if change.action in ("update", "replace") and kind == "Deployment" and key in old:
            # The connector's setting naming the namespace of the ephemeral fleets it manages.
            fleets_were = _env(old[key].manifest, env_name("namespace"))
            fleets_are = _env(obj.manifest if obj else {}, env_name("namespace"))
            if fleets_were and fleets_were != fleets_are:
                found.append(f"{change.key} moves its ephemeral fleets from namespace {fleets_were} to "
                             f"{fleets_are}: the fleets already in {fleets_were} are orphaned (no longer "
                             f"listed, garbage-collected or torn down by DeleteTask); release them before "
                             f"this change")
        if change.action == "update" and kind == "StatefulSet" and key in old and change.key in new:
            was, now = _server_flags(old[key].manifest), _server_flags(new[change.key].manifest)
            if was and was != now:
                moved = ", ".join(f"{flag} {was[flag]} -> {now.get(flag)}" for flag in sorted(was)
                                  if was[flag] != now.get(flag))
                found.append(f"{change.key} is resharded in place ({moved}): during the rolling update old "
                             f"and new pods serve different partition maps, so clients read partitions "
                             f"twice or not at all until the last pod has rolled; stop its users first, or "
                             f"add the new layout as a new shared service and move users to it")
        value_changed = any(f.path == "value" for f in change.fields)
        if change.action == "update" and kind == "PriorityClass" and value_changed:
            found.append(f"{change.key}: value is immutable in the API server and pulumi-kubernetes does not "
                         f"replace a PriorityClass for it: `pulumi up` fails; rename the class instead")
    return found


# ---- rendering -------------------------------------------------------------------------------------

def text_report(diff: StackDiff, problems: Sequence[str]) -> str:
    lines = []
    for change in diff.changes:
        renamed = f" (was {change.old_key})" if change.old_key else ""
        lines.append(f"{change.symbol} {change.action} {change.key}{renamed}")
        lines += [f"    {f.text()}" for f in change.fields]
    if not diff.changes:
        lines.append("no differences")
    for warning in diff.warnings:
        lines.append(f"WARNING: {warning}")
    for problem in problems:
        lines.append(f"NEW STACK FAILS: {problem}")
    return "\n".join(lines)


def summary(diff: StackDiff, problems: Sequence[str]) -> str:
    parts = [f"{diff.count(a)} to {a}" for a in ("create", "update", "replace", "delete", "patch", "unpatch")
             if diff.count(a)]
    return (f"{', '.join(parts) or 'no changes'}; {len(diff.warnings)} destructive-change warning(s); "
            f"{len(problems)} schema/policy problem(s) in the new stack")


def markdown_report(title: str, diff: StackDiff, problems: Sequence[str]) -> str:
    """A pull-request comment: summary, warnings and problems first, then each object's fields."""
    out = [f"### {title}", "", f"**{summary(diff, problems)}**", ""]
    if diff.warnings:
        out += ["> [!WARNING]", "> **Destructive changes**"]
        out += [f"> - {_md(w)}" for w in diff.warnings] + [""]
    if problems:
        out += ["> [!CAUTION]", "> **The new stack fails schema or policy checks**"]
        out += [f"> - `{p}`" for p in problems] + [""]
    if diff.changes:
        out += ["| action | object | fields |", "|---|---|---|"]
        for c in diff.changes:
            renamed = f" (was `{c.old_key}`)" if c.old_key else ""
            out.append(f"| {c.action} | `{c.key}`{renamed} | {len(c.fields) or ''} |")
        details = [c for c in diff.changes if c.fields]
        if details:
            out += ["", "<details><summary>Field changes</summary>", ""]
            for change in details:
                out += [f"**{change.action}** `{change.key}`", "", "```diff"]
                out += [f"{'!' if f.replaces else '~'} {f.text()}" for f in change.fields]
                out += ["```", ""]
            out += ["</details>"]
    else:
        out += ["No differences."]
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")
