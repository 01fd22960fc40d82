"""`graphfleet`: review a datacenter stack offline before `pulumi up`.

    graphfleet plan ltx1            table of every object, then schema and policy checks
    graphfleet plan ltx1 --json     the rendered manifests as JSON
    graphfleet diff A.yaml B.yaml   what `pulumi up` would change going from stack file A to B:
                                    create/update/replace/delete per object, field by field, with
                                    warnings for destructive changes and the new side's checks
    graphfleet diff A B --markdown  the same as a pull-request comment
    graphfleet gc                   tear down expired ephemeral fleets (the connector's GRAPHFLEET_* env)

The stack's real program (`infra.datacenter.program`, what `pulumi up` runs) is rendered under
Pulumi mocks: no CLI, cluster or credentials are needed. Exit status: 0 clean, 1 when any object
(of the new side, for diff) fails the Kubernetes schema or a policy rule (each printed) or gc could
not remove a fleet, 2 when a stack file or the settings are invalid (nothing is rendered), 3 when a
diff has destructive changes (and no violations) unless --allow-destructive.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from infra.config import GPU_RESOURCE, KUBELET_TAINTS, ConfigError, load_stack_config, stack_name, stack_path
from infra.stack_diff import StackObject, diff_stacks, markdown_report, summary, text_report

EXIT_OK, EXIT_VIOLATIONS, EXIT_BAD_CONFIG, EXIT_DESTRUCTIVE = 0, 1, 2, 3
Manifest = Mapping[str, Any]


def render_objects(stack: str) -> tuple[str, list[StackObject], dict[str, Any]]:
    """(stack name, Kubernetes resources, stack outputs) of a stack name or file; raises ConfigError."""
    # Imported here: loading Pulumi and pulumi_kubernetes takes a second or two.
    from infra.datacenter import program
    from infra.render import render

    path = stack_path(stack)
    config = load_stack_config(path)
    name = stack_name(path)

    def run() -> None:
        program(config)

    rendered = render(run, stack=name)
    objects = [StackObject(urn=r.urn.split("::", 2)[2], type=r.type, manifest=r.inputs)
               for r in rendered.resources if r.is_kubernetes_object]
    # Sorted: registration order varies from run to run, a review should not.
    return name, sorted(objects, key=lambda o: o.key), rendered.outputs


def render_stack(stack: str) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """(stack name, manifests, stack outputs) of a stack name or file; raises ConfigError."""
    name, objects, outputs = render_objects(stack)
    return name, [dict(o.manifest) for o in objects], outputs



def _pod(manifest: Manifest) -> Mapping[str, Any]:
    return (manifest.get("spec") or {}).get("template", {}).get("spec", {})


def details(manifest: Manifest) -> str:
    """The fields a reviewer checks first, per kind."""
    kind, spec = manifest.get("kind"), manifest.get("spec") or {}
    if kind in ("StatefulSet", "Deployment"):
        container = (_pod(manifest).get("containers") or [{}])[0]
        requests = (container.get("resources") or {}).get("requests") or {}
        command = container.get("command") or []
        shards = (f" partitions={command[command.index('--partitions') + 1]}"
                  if "--partitions" in command[:-1] else "")
        return (f"replicas={spec.get('replicas')}{shards} cpu={requests.get('cpu')} "
                f"memory={requests.get('memory')} image={container.get('image')}")
    if kind == "HorizontalPodAutoscaler":
        return f"replicas={spec.get('minReplicas')}-{spec.get('maxReplicas')}"
    if kind == "ClusterQueue":
        quotas = {r["name"]: r["nominalQuota"] for group in spec.get("resourceGroups", [])
                  for flavor in group.get("flavors", []) for r in flavor.get("resources", [])}
        return (f"gpus={quotas.get(GPU_RESOURCE)} cpu={quotas.get('cpu')} memory={quotas.get('memory')} "
                f"cohort={spec.get('cohort')}")
    if kind == "LocalQueue":
        return f"clusterQueue={spec.get('clusterQueue')}"
    if kind == "NodePool":
        template = spec.get("template", {}).get("spec", {})
        types = [v for r in template.get("requirements", []) for v in r.get("values", [])
                 if r.get("key") == "node.kubernetes.io/instance-type"]
        return f"instanceTypes={','.join(types)} limit gpus={spec.get('limits', {}).get(GPU_RESOURCE)}"
    if kind == "Node":
        meta = manifest.get("metadata") or {}
        return (f"labels={json.dumps(meta.get('labels'))} kubelet registers taints="
                f"{(meta.get('annotations') or {}).get(KUBELET_TAINTS, '')}")
    if kind == "ResourceFlavor":
        return f"nodeLabels={json.dumps(spec.get('nodeLabels'))}"
    if kind == "PriorityClass":
        return f"value={manifest.get('value')}"
    if kind == "Role":
        return "; ".join(f"{','.join(r.get('resources', []))}: {','.join(r.get('verbs', []))}"
                         for r in manifest.get("rules", []))
    if kind == "Service":
        ports = ",".join(str(p.get("port")) for p in spec.get("ports", []))
        kind_of = "headless" if spec.get("clusterIP") == "None" else spec.get("type", "ClusterIP")
        return f"{kind_of} ports={ports}"
    if kind == "PodDisruptionBudget":
        return ("maxUnavailable=" + str(spec["maxUnavailable"]) if "maxUnavailable" in spec
                else f"minAvailable={spec.get('minAvailable')}")
    return ""


def table(objects: Sequence[StackObject]) -> str:
    """One row per object; a patch of an object that exists before the stack says so in KIND."""
    rows = [("KIND", "NAMESPACE", "NAME", "DETAILS")]
    rows += [(f"{o.manifest.get('kind')}{' (patch)' if o.patch else ''}",
              str((o.manifest.get("metadata") or {}).get("namespace") or "-"),
              str((o.manifest.get("metadata") or {}).get("name")), details(o.manifest)) for o in objects]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip()
                     for r in rows)


def problems(manifests: Sequence[Manifest]) -> list[str]:
    """Schema errors and policy violations, one line each."""
    from infra import policy
    from infra.k8s_schema import validate_manifests

    return ([f"schema: {e}" for e in validate_manifests(manifests)]
            + [f"policy: {v}" for v in policy.check(manifests)])


def cmd_plan(args: argparse.Namespace) -> int:
    name, objects, outputs = render_objects(args.stack)
    manifests = [o.manifest for o in objects]
    found = problems(manifests)
    if args.json:
        print(json.dumps(manifests, indent=2, sort_keys=True))
    else:
        patches = sum(o.patch for o in objects)
        print(f"stack {name}: {len(manifests) - patches} Kubernetes objects created, {patches} existing "
              f"object(s) patched\n")
        print(table(objects))
        print("\noutputs:")
        for key, value in outputs.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            indented = "\n    " + text.rstrip().replace("\n", "\n    ") if "\n" in text else f" {text}"
            print(f"  {key}:{indented}")
    for line in found:
        print(line, file=sys.stderr)
    status = f"{len(found)} problem(s)" if found else "schema and policy checks passed"
    print(f"{name}: {len(manifests)} objects, {status}", file=sys.stderr)
    return EXIT_VIOLATIONS if found else EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    # Both sides are rendered before anything is printed: a bad stack file prints nothing but its error.
    old_name, old, _ = render_objects(args.old)
    new_name, new, _ = render_objects(args.new)
    diff = diff_stacks(old, new)
    found = problems([o.manifest for o in new])
    if args.markdown:
        print(markdown_report(f"graphfleet diff: {args.old} -> {args.new}", diff, found), end="")
    else:
        print(text_report(diff, found))
    print(summary(diff, found), file=sys.stderr)
    if found:
        return EXIT_VIOLATIONS
    return EXIT_DESTRUCTIVE if diff.warnings and not args.allow_destructive else EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    """Tear down expired ephemeral fleets, with the connector's GRAPHFLEET_* settings."""
    from flyte_agent.gc import collect
    from flyte_agent.provisioner import GcError
    from flyte_agent.settings import Settings, SettingsError

    try:
        removed = collect(Settings.from_env())
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except GcError as exc:
        # What was removed is still reported: a cron job's log should say both.
        for name in exc.removed:
            print(name)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_VIOLATIONS
    for name in removed:
        print(name)
    print(f"{len(removed)} expired fleet(s) removed", file=sys.stderr)
    return EXIT_OK


def cmd_fleets(args: argparse.Namespace) -> int:
    """List the live fleets of the backend the connector's GRAPHFLEET_* settings name."""
    from flyte_agent import fleets
    from flyte_agent.settings import Settings, SettingsError

    try:
        found = fleets.listing(Settings.from_env())
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(json.dumps(fleets.as_json(found), indent=2) if args.json else fleets.table(found))
    return EXIT_OK


RELEASE_WAIT_SECONDS = 900


def cmd_fleets_release(args: argparse.Namespace) -> int:
    """Release one fleet exactly as a teardown task of `--owner` (and `--execution`) would."""
    import time

    from flyteidl.core.execution_pb2 import TaskExecution

    from flyte_agent.connector import DataServiceTeardownConnector, TeardownMeta
    from flyte_agent.settings import SettingsError

    caller = args.execution or f"{args.owner}/graphfleet-operator"
    if "/".join(caller.split("/")[:2]) != args.owner:
        print(f"error: --execution {caller} is not in --owner {args.owner}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    teardown = DataServiceTeardownConnector()
    deadline = time.monotonic() + RELEASE_WAIT_SECONDS
    try:
        while True:
            # The teardown task's own path: the same name checks and ownership rules, nothing of our own.
            resource = teardown._get(TeardownMeta(service=args.name, caller=caller, owner=args.owner))
            if resource.phase != TaskExecution.RUNNING or time.monotonic() > deadline:
                break
            print(resource.message, file=sys.stderr)
            time.sleep(2)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if resource.phase == TaskExecution.SUCCEEDED:
        print(dict(resource.outputs or {}).get("outcome", f"{args.name}: released"))
        return EXIT_OK
    print(f"error: {resource.message}", file=sys.stderr)
    return EXIT_VIOLATIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphfleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="render a stack offline and check every object")
    plan.add_argument("stack", help="a stack name (ltx1) or a stack file path")
    plan.add_argument("--json", action="store_true", help="print the rendered manifests as JSON")
    plan.set_defaults(run=cmd_plan)
    diff = commands.add_parser("diff", help="what changes between two stack files")
    diff.add_argument("old", help="stack name or file: the current state")
    diff.add_argument("new", help="stack name or file: the proposed state")
    diff.add_argument("--markdown", action="store_true", help="print a pull-request comment")
    diff.add_argument("--allow-destructive", action="store_true",
                      help="exit 0 despite destructive-change warnings (still printed)")
    diff.set_defaults(run=cmd_diff)
    gc = commands.add_parser("gc", help="tear down ephemeral fleets whose time-to-live has passed")
    gc.set_defaults(run=cmd_gc)
    fleets = commands.add_parser("fleets", help="every live fleet of the connector's backend")
    fleets.add_argument("--json", action="store_true", help="every field as JSON, servers included")
    fleets.set_defaults(run=cmd_fleets)
    fleet_commands = fleets.add_subparsers(dest="fleet_command")
    release = fleet_commands.add_parser(
        "release", help="release one fleet as a teardown task of its project/domain would")
    release.add_argument("name", help="the fleet: a DataServiceTask's `service` output (`graphfleet fleets`)")
    release.add_argument("--owner", required=True, help="project/domain the fleet belongs to")
    release.add_argument("--execution", default="",
                         help="project/domain/name: on a shared fleet, the execution whose lease to drop")
    release.set_defaults(run=cmd_fleets_release)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG


if __name__ == "__main__":
    sys.exit(main())
