"""`pulumi preview -s <dc>` against a real cluster, when the CLI and a kubeconfig exist."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from infra.config import STACKS_DIR, stack_name

ROOT = Path(__file__).resolve().parent.parent
KUBECONFIG = Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")))


@pytest.mark.integration
@pytest.mark.parametrize("stack", [stack_name(p) for p in sorted(STACKS_DIR.glob("Pulumi.*.yaml"))])
def test_pulumi_preview(stack: str) -> None:
    if shutil.which("pulumi") is None:
        pytest.skip("the pulumi CLI is not installed on this machine")
    if not KUBECONFIG.exists():
        pytest.skip(f"no kubeconfig at {KUBECONFIG}")
    result = subprocess.run(["pulumi", "preview", "--non-interactive", "-s", stack], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
