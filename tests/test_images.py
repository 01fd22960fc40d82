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


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_hadolint_passes(dockerfile: str) -> None:
    result = subprocess.run([str(HADOLINT), str(DOCKER / dockerfile)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_connector_pins_the_cli_and_provider_the_project_locks() -> None:
    args = dict(a.split("=", 1) for a in instruction("connector.Dockerfile", "ARG"))
    assert args["PULUMI_VERSION"] == lock_version("pulumi"), "the CLI must match the pulumi SDK in the lock"
    assert args["PULUMI_KUBERNETES_VERSION"] == lock_version("pulumi-kubernetes")
    text = (DOCKER / "connector.Dockerfile").read_text()
    assert 'plugin install resource kubernetes "${PULUMI_KUBERNETES_VERSION}"' in text
    assert "pip install --no-deps -r requirements.lock" in text


@pytest.mark.parametrize("dockerfile", IMAGES)
def test_images_run_as_a_numeric_non_root_user(dockerfile: str) -> None:
    (user,) = instruction(dockerfile, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0, user


def test_graph_engine_user_matches_the_statefulset() -> None:
    (user,) = instruction("graph-engine.Dockerfile", "USER")
    assert user == f"{default_run_as_user()}:{default_run_as_user()}"


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
