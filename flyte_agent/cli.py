"""`graphfleet`'s connector commands, added to the stack commands of infra/cli.py (`plan`, `diff`).

    graphfleet gc                   tear down expired ephemeral fleets (the connector's GRAPHFLEET_* env)
    graphfleet fleets [--json]      every live fleet of the connector's backend
    graphfleet fleets release NAME --owner P/D   release one fleet as its teardown task would

Exit status as the stack commands', and 1 when gc could not remove a fleet, 2 when the settings are
invalid. infra, the bottom layer, imports nothing of flyte_agent; the flyte_agent imports stay inside
the commands: `plan` and `diff` need no connector settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from infra import cli as stack_cli
from infra.cli import EXIT_BAD_CONFIG, EXIT_OK, EXIT_VIOLATIONS


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


def add_connector_commands(commands: stack_cli.Commands) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    return stack_cli.build_parser(add_connector_commands, description=f"{stack_cli.__doc__}\n{__doc__}")


def main(argv: Sequence[str] | None = None) -> int:
    return stack_cli.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
