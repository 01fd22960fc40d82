"""The two container images: lint clean, pinned to the project's versions, non-root, real entry points; the
graph-engine image carries the server and what it runs on, nothing else."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from infra.contract import SERVE_MODULES
from infra.graph_service import GraphDataServiceArgs
from infra.image_contract import CONNECTOR_UID, CONNECTOR_USER, GRAPH_ENGINE_UID, IMAGE_PULUMI_HOME

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
HADOLINT = Path(sys.executable).parent / "hadolint"
IMAGES = ["connector.Dockerfile", "graph-engine.Dockerfile"]
GRAPH_ENGINE_REQUIREMENTS = DOCKER / "graph-engine.requirements.lock"
# What the graph-engine image copies: the server's package and the layers' contract (its only import
# of the project), beside its own requirements.
GRAPH_ENGINE_COPIES = {"docker/graph-engine.requirements.lock", "graph_engine/", "infra/__init__.py",
                       "infra/contract.py"}
# Loaded by name, never imported: fsspec's implementation of the s3:// graphs graph_engine/store.py reads.
SERVER_PLUGINS = {"s3fs"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """A requirements file's `name==version` lines, by canonical name."""
    pinned = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[canonical(name)] = version.strip()
    return pinned


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


def test_graph_engine_requirements_are_the_locks_pins_without_the_heavy_stacks() -> None:
    pinned, lock = pins(GRAPH_ENGINE_REQUIREMENTS), pins(ROOT / "requirements.lock")
    differ = [f"{name}=={version} (requirements.lock: {lock.get(name, 'absent')})"
              for name, version in pinned.items() if lock.get(name) != version]
    assert not differ, f"{GRAPH_ENGINE_REQUIREMENTS.name} must pin what requirements.lock pins: {differ}"
    heavy = {"torch", "flytekit", "pulumi", "pulumi-kubernetes", "pyarrow"} & set(pinned)
    assert not heavy, f"the graph-engine image carries only the server, not {heavy}"


def test_graph_engine_requirements_hold_everything_they_require() -> None:
    """Installed with --no-deps, the file must be closed under its packages' own requirements (as
    `pip check` would see it), read from their metadata in this environment (which holds the lock)."""
    pinned = pins(GRAPH_ENGINE_REQUIREMENTS)
    missing = []
    for name in pinned:
        for line in importlib.metadata.distribution(name).requires or []:
            required = Requirement(line)
            if (required.marker is None or required.marker.evaluate({"extra": ""})) and \
                    canonical(required.name) not in pinned:
                missing.append(f"{name} requires {required}")
    assert not missing, f"add to {GRAPH_ENGINE_REQUIREMENTS.name} at requirements.lock's versions: {missing}"


def server_imports() -> tuple[set[str], set[str]]:
    """(project modules, third-party top-level packages) `python -m graph_engine.server` imports,
    following the project's modules from graph_engine/server.py, function-level imports included."""
    project, third_party = set(), set()
    todo = ["graph_engine.server"]
    while todo:
        module = todo.pop()
        if module in project:
            continue
        project.add(module)
        path = ROOT / (module.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in ("graph_engine", "infra"):
                    if (ROOT / (name.replace(".", "/") + ".py")).exists():
                        todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    third_party.add(top)
    return project, third_party


def test_graph_engine_requirements_hold_what_the_server_imports() -> None:
    _, third_party = server_imports()
    distributions = importlib.metadata.packages_distributions()
    needed = {canonical(d) for top in third_party for d in distributions.get(top, [top])} | SERVER_PLUGINS
    missing = needed - set(pins(GRAPH_ENGINE_REQUIREMENTS))
    assert not missing, f"graph_engine.server imports {missing}, not in {GRAPH_ENGINE_REQUIREMENTS.name}"


def test_graph_engine_image_copies_only_the_server_and_the_contract() -> None:
    copies = [line.split() for line in instruction("graph-engine.Dockerfile", "COPY")]
    sources = {source for *froms, _ in copies for source in froms}
    assert sources == GRAPH_ENGINE_COPIES, f"the graph-engine image copies {sorted(sources)}"
    text = (DOCKER / "graph-engine.Dockerfile").read_text()
    assert "pip install --no-deps -r graph-engine.requirements.lock" in text
    # What it copies is all the server imports of the project.
    project, _ = server_imports()
    outside = {m for m in project if not m.startswith("graph_engine.") and m != "infra.contract"}
    assert not outside, f"graph_engine.server imports {outside}, which the image does not copy"
