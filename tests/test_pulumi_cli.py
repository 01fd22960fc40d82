"""flyte_agent/pulumi_cli.py's own version check, as the Automation API's (issue 8 review)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flyte_agent.pulumi_cli import TimedPulumiCommand

# The Automation API's opt-out (pulumi 3.272.0 sdk/python/lib/pulumi/automation/_env.py).
SKIP_VERSION_CHECK_ENV = "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK"


def old_cli(tmp_path: Path) -> str:
    """A `pulumi` that is 3.200.0: older than self-managed stack tags."""
    path = tmp_path / "pulumi"
    path.write_text("#!/bin/sh\necho v3.200.0\n")
    path.chmod(0o755)
    return str(path)


def test_an_old_cli_is_refused_naming_the_minimum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SKIP_VERSION_CHECK_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"pulumi 3\.200\.0; graphfleet needs 3\.211\.0 or later"):
        TimedPulumiCommand(old_cli(tmp_path), long_timeout=10, short_timeout=10)


def test_the_automation_apis_opt_out_skips_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SKIP_VERSION_CHECK_ENV, "true")
    command = TimedPulumiCommand(old_cli(tmp_path), long_timeout=10, short_timeout=10)
    assert str(command.version) == "3.200.0"


# The real CLI's output (pulumi 3.274.0, pulumi-kubernetes 4.32.0) for a recovering `up` whose create met an
# object a killed `up` left (tests/test_pulumi_real.py), trimmed to its diagnostics.
_ALREADY_EXISTS = '''Updating (real-u):
    pulumi:pulumi:Stack graphfleet-fleets-real-u running error: update failed
    pulumi:pulumi:Stack graphfleet-fleets-real-u **failed** 1 error; 1 warning
Diagnostics:
  pulumi:pulumi:Stack (graphfleet-fleets-real-u):
    warning: Attempting to deploy or update resources with 1 pending operations from previous deployment.
      * urn:pulumi:real-u::graphfleet-fleets::graphfleet:graph:GraphDataService$kubernetes:apps/v1:StatefulSet::real-u-servers, interrupted while creating
    error: update failed

  kubernetes:apps/v1:StatefulSet (real-u-servers):
    error: resource "urn:pulumi:real-u::graphfleet-fleets::graphfleet:graph:GraphDataService$kubernetes:apps/v1:StatefulSet::real-u-servers" was not successfully created by the Kubernetes API server: statefulsets.apps "real-u" already exists

    The resource already exists in the cluster. This can happen when:

Resources:
    ~ 1 updated
    2 errored
'''  # noqa: E501


def test_a_failed_up_is_told_by_its_resources_causes_not_the_cli_summary() -> None:
    """The trial's finding: the cause ("conflict", "already exists") never reached the user, since the
    `error:` lines were kept whole and the URN preamble alone filled the 256 characters of the record."""
    from pulumi.automation import CommandResult
    from pulumi.automation.errors import create_command_error

    from flyte_agent.pulumi_cli import error_text

    err = create_command_error(CommandResult(stdout=_ALREADY_EXISTS, stderr="", code=1))
    assert error_text(err) == 'StatefulSet real-u-servers: statefulsets.apps "real-u" already exists'
    # A field conflict, as the real provider words it (tests/test_pulumi_field_managers.py): the link
    # goes, the next line's managers and field stay.
    conflict = _ALREADY_EXISTS.replace(
        'statefulsets.apps "real-u" already exists',
        "server-side apply field conflict detected, see https://www.pulumi.com/registry/packages/kubernetes/"
        "how-to-guides/managing-resources-with-server-side-apply/"
        "#handle-field-conflicts-on-existing-resources"
        ' for troubleshooting help\n    The resource managed by field manager "pulumi-kubernetes-0eea3542"'
        ' had an apply conflict: Apply failed with 1 conflict: conflict with "pulumi-kubernetes-f3d7cda4": '
        '.spec.template.spec.containers[name="graph-engine"].env[name="GRAPHFLEET_ORDINAL"].valueFrom.fieldRef')
    text = error_text(create_command_error(CommandResult(stdout=conflict, stderr="", code=1)))
    assert text == ('StatefulSet real-u-servers: server-side apply field conflict detected; Apply failed '
                    'with 1 conflict: conflict with "pulumi-kubernetes-f3d7cda4": '
                    '.spec.template.spec.containers[name="graph-engine"].env[name="GRAPHFLEET_ORDINAL"]'
                    '.valueFrom.fieldRef')
    # Without diagnostics (a CLI failing before any resource), its error lines.
    early = CommandResult(stdout="", stderr="error: could not load plugin kubernetes\n", code=255)
    assert error_text(create_command_error(early)).endswith("error: could not load plugin kubernetes")
