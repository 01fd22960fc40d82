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
