"""`graphfleet plan` / `graphfleet diff`: review a datacenter stack offline before `pulumi up`.

    graphfleet plan ltx1            table of every object, then schema and policy checks
    graphfleet plan ltx1 --json     the rendered manifests as JSON
    graphfleet diff A.yaml B.yaml   what `pulumi up` would change going from stack file A to B:
                                    create/update/replace/delete per object, field by field, with
                                    warnings for destructive changes and the new side's checks
    graphfleet diff A B --markdown  the same as a pull-request comment

The stack's real program (`infra.datacenter.program`, what `pulumi up` runs) is rendered under
Pulumi mocks: no CLI, cluster or credentials are needed. Exit status: 0 clean, 1 when any object
(of the new side, for diff) fails the Kubernetes schema or a policy rule (each printed), 2 when a
stack file is invalid (nothing is rendered), 3 when a diff has destructive changes (and no
violations) unless --allow-destructive.

The `graphfleet` console script is flyte_agent/cli.py: these commands plus the connector's (gc,
fleets), which infra, the bottom layer, cannot import. `python -m infra.cli` runs these alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

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


# The subcommand table (argparse's type for it is private), which the connector's commands join.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_stack_commands(commands: Commands) -> None:
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


def build_parser(*more: Callable[[Commands], None],
                 description: str | None = __doc__) -> argparse.ArgumentParser:
    """`graphfleet`'s parser: the stack commands, then each of `more`'s (a layer above adds its own)."""
    parser = argparse.ArgumentParser(prog="graphfleet", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_stack_commands(commands)
    for add in more:
        add(commands)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the command it names; a bad stack file is exit status 2."""
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
