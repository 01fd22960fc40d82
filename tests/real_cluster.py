"""The gate for tests that need a full Pulumi deployment engine: the CLI, the python language host
and the pulumi-kubernetes provider at the lock's version, and a kubeconfig.

`make tools` builds the CLI and a control plane (tests/control_plane.py), but the Go module proxy
these machines reach serves neither `pulumi-language-python` nor the provider at the lock's version
(README "Verified here, and not"), so these tests skip here and name what is missing.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PULUMI = shutil.which("pulumi")
KUBECONFIG = Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")))
_PULUMI_HOME = Path(os.environ.get("PULUMI_HOME", str(Path.home() / ".pulumi")))
_K8S = re.search(r"^pulumi-kubernetes==(\S+)$", (REPO / "requirements.lock").read_text(), re.M | re.I)
K8S_PLUGIN = _PULUMI_HOME / "plugins" / f"resource-kubernetes-v{_K8S.group(1) if _K8S else '?'}"

_missing = [what for what, there in (
    ("the pulumi CLI on PATH", PULUMI is not None),
    ("pulumi-language-python on PATH (its Go module is not served here)",
     shutil.which("pulumi-language-python") is not None),
    (f"the kubernetes provider plugin at {K8S_PLUGIN} (the lock's version is not served here)",
     K8S_PLUGIN.exists()),
    (f"a kubeconfig at {KUBECONFIG}", KUBECONFIG.exists()),
) if not there]

needs_pulumi_and_cluster = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(_missing), reason="needs " + "; ".join(_missing)),
]
