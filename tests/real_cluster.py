"""The one gate for tests that need a real `pulumi` CLI and a Kubernetes cluster: marked, and skipped
with the reason stated where either is missing (as on the development machines and CI here)."""

import os
import shutil
from pathlib import Path

import pytest

PULUMI = shutil.which("pulumi")
KUBECONFIG = Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")))

needs_pulumi_and_cluster = [
    pytest.mark.integration,
    pytest.mark.skipif(PULUMI is None,
                       reason="no pulumi CLI on PATH (none can be installed on these machines)"),
    pytest.mark.skipif(not KUBECONFIG.exists(), reason=f"no kubeconfig at {KUBECONFIG}"),
]
