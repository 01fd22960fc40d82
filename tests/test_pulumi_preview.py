"""`pulumi preview -s <dc>` against a real cluster, when the CLI and a kubeconfig exist."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infra.config import STACKS_DIR, stack_name
from tests.real_cluster import needs_pulumi_and_cluster

pytestmark = needs_pulumi_and_cluster
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("stack", [stack_name(p) for p in sorted(STACKS_DIR.glob("Pulumi.*.yaml"))])
def test_pulumi_preview(stack: str) -> None:
    result = subprocess.run(["pulumi", "preview", "--non-interactive", "-s", stack], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
