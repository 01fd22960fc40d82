"""The two container images: lint clean, pinned to the project's versions, non-root, real entry points."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flyte_agent.connector import SERVE_MODULES
from infra.graph_service import GraphDataServiceArgs
from infra.image_contract import CONNECTOR_UID, CONNECTOR_USER, GRAPH_ENGINE_UID, IMAGE_PULUMI_HOME

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
HADOLINT = Path(sys.executable).parent / "hadolint"
IMAGES = ["connector.Dockerfile", "graph-engine.Dockerfile"]


def lock_version(package: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower().replace("_", "-") == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements.lock")


def instruction(dockerfile: str, keyword: str) -> list[str]:
    text = (DOCKER / dockerfile).read_text()
    return [m.group(1).strip() for m in re.finditer(rf"^{keyword}\s+(.+)$", text, re.MULTILINE)]


def default_run_as_user() -> int:
    return GraphDataServiceArgs.__dataclass_fields__["run_as_user"].default  # type: ignore[return-value]


def build_args(dockerfile: str) -> dict[str, str]:
    return dict(a.split("=", 1) for a in instruction(dockerfile, "ARG"))


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_hadolint_passes(dockerfile: str) -> None:
    result = subprocess.run([str(HADOLINT), str(DOCKER / dockerfile)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_connector_pins_the_cli_and_provider_the_project_locks() -> None:
    args = build_args("connector.Dockerfile")
    assert args["PULUMI_VERSION"] == lock_version("pulumi"), "the CLI must match the pulumi SDK in the lock"
    assert args["PULUMI_KUBERNETES_VERSION"] == lock_version("pulumi-kubernetes")
    text = (DOCKER / "connector.Dockerfile").read_text()
    assert 'plugin install resource kubernetes "${PULUMI_KUBERNETES_VERSION}"' in text
    assert "pip install --no-deps -r requirements.lock" in text


@pytest.mark.parametrize(("dockerfile", "uid"), [("connector.Dockerfile", CONNECTOR_UID),
                                                  ("graph-engine.Dockerfile", GRAPH_ENGINE_UID)])
def test_images_run_as_the_high_uid_their_pods_run_as(dockerfile: str, uid: int) -> None:
    """The image's user is the pod's runAsUser, created with a passwd entry (the Pulumi CLI looks it up)."""
    assert uid >= 10000
    assert build_args(dockerfile)["UID"] == str(uid)
    (user,) = instruction(dockerfile, "USER")
    assert user == "${UID}:${UID}"
    text = (DOCKER / dockerfile).read_text()
    assert 'useradd --uid "${UID}" --gid "${UID}"' in text


def test_pods_run_as_the_images_users() -> None:
    assert default_run_as_user() == GRAPH_ENGINE_UID
    from infra.connector_deployment import runtime_env
    assert {"name": "USER", "value": CONNECTOR_USER} in runtime_env()
    assert build_args("connector.Dockerfile")["ACCOUNT"] == CONNECTOR_USER


def test_connector_image_installs_plugins_where_the_deployment_links_them_from() -> None:
    args = build_args("connector.Dockerfile")
    assert args["IMAGE_PULUMI_HOME"] == IMAGE_PULUMI_HOME
    assert "PULUMI_HOME=${IMAGE_PULUMI_HOME}" in (DOCKER / "connector.Dockerfile").read_text().split()


def test_entry_points_exist() -> None:
    (entrypoint,) = instruction("graph-engine.Dockerfile", "ENTRYPOINT")
    assert entrypoint == '["python", "-m", "graph_engine.server"]'
    assert importlib.util.find_spec("graph_engine.server") is not None
    (cmd,) = instruction("connector.Dockerfile", "CMD")
    assert json.loads(cmd) == ["pyflyte", "serve", "connector", "--port", "8000", *SERVE_MODULES]
    assert importlib.util.find_spec(SERVE_MODULES[-1]) is not None
    assert (Path(sys.executable).parent / "pyflyte").exists()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'graphfleet = "flyte_agent.connector"' in pyproject  # how `pyflyte serve connector` finds it
