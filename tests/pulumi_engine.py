"""The real Pulumi engine for the tests: the CLI, its Python language host and the pulumi-kubernetes
provider, all from `make tools` (.tools/bin, the provider installed as a plugin in .tools/pulumi-home).

`engine_env()` is the environment a user's shell would have: the tools first on PATH (the CLI finds
its language host beside itself), a PULUMI_HOME of the test's own whose plugins are the built ones,
plugin downloads off (nothing is fetched; a missing plugin fails instead), and a `file://` state backend.
Without the tools a test marked `needs_engine` skips with "run `make tools`"; under `make test` it
fails (tests/control_plane.py `needs_tools`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.control_plane import CONTROL_PLANE_TOOLS, REPO, TOOLS_BIN, needs_tools, require_tools

ENGINE_TOOLS = ("pulumi", "pulumi-language-python", "pulumi-language-python-exec")
PULUMI_HOME = REPO / ".tools" / "pulumi-home"
PASSPHRASE = "graphfleet-tests"


def locked(package: str) -> str:
    """The version of `package` in requirements.lock."""
    lock = (REPO / "requirements.lock").read_text()
    found = re.search(rf"^{re.escape(package)}==(\S+)$", lock, re.M | re.I)
    assert found, f"{package} is not in requirements.lock"
    return found.group(1)


def provider_plugin() -> Path:
    """Where `make tools` installs the provider: the CLI runs exactly the SDK's version."""
    version = locked("pulumi-kubernetes")
    return PULUMI_HOME / "plugins" / f"resource-kubernetes-v{version}" / "pulumi-resource-kubernetes"


def _missing_engine() -> str:
    plugin = provider_plugin()
    return "" if plugin.exists() else f"missing the kubernetes provider plugin {plugin}: run `make tools`"


def needs_engine() -> list[pytest.MarkDecorator]:
    """The marks of a real-engine test: integration, and skipped without the tools outside `make test`."""
    missing = _missing_engine()
    return [pytest.mark.integration, needs_tools(*CONTROL_PLANE_TOOLS, *ENGINE_TOOLS),
            pytest.mark.skipif(bool(missing) and not os.environ.get("GRAPHFLEET_REQUIRE_TOOLS"),
                               reason=missing or "-")]


def require_engine() -> None:
    require_tools(*CONTROL_PLANE_TOOLS, *ENGINE_TOOLS)
    missing = _missing_engine()
    if missing:
        pytest.fail(missing)


def engine_env(home: Path, state_backend: Path, kubeconfig: Path) -> dict[str, str]:
    """The environment of a user running the CLI: tools on PATH, their own PULUMI_HOME (plugins linked
    from the build), a `file://` state backend and `kubeconfig`."""
    require_engine()
    (home / "plugins").parent.mkdir(parents=True, exist_ok=True)
    if not (home / "plugins").exists():
        (home / "plugins").symlink_to(PULUMI_HOME / "plugins")
    state_backend.mkdir(parents=True, exist_ok=True)
    venv_bin = REPO / ".venv" / "bin"
    return {**os.environ,
            "PATH": f"{TOOLS_BIN}:{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PULUMI_HOME": str(home), "PULUMI_BACKEND_URL": f"file://{state_backend}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE, "PULUMI_SKIP_UPDATE_CHECK": "true",
            # Never fetch a plugin: the built ones are the only ones (a missing one fails the test).
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "KUBECONFIG": str(kubeconfig)}
