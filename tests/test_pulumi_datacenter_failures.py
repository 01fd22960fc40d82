"""The program's failure modes as an operator meets them (issue 17): `pulumi up -s lva1` with the real
CLI against the control plane, in a scratch copy of the project after the documented bootstrap
(tests/test_pulumi_datacenter.py `scratch_project`).

A bad stack file, a missing CRD and a `kubernetes:context` the kubeconfig lacks each fail the `up`
before any object, with our message (what `graphfleet plan` or `infra.prerequisites` says for the
same cause), not the provider's or the kubernetes client's. And what the CLI writes to the committed
stack file (its `encryptionsalt:`), as docs/stacks.md describes it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import ConfigError, load_stack_config, stack_path
from infra.prerequisites import PrerequisiteError, check
from tests.control_plane import ControlPlane
from tests.pulumi_engine import needs_engine
from tests.test_pulumi_datacenter import STACKS, Project, ok, pulumi, release, scratch_project, snapshot

pytestmark = needs_engine()

STACK = "lva1"  # its Karpenter pools need the one CRD that only some datacenters need
_SALT_LINE = re.compile(rb"encryptionsalt: v1:[A-Za-z0-9+/=:]+\n")


@pytest.fixture(scope="module")
def project(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    p = scratch_project(control_plane, STACK, tmp_path_factory.mktemp(f"failures-{STACK}"))
    ok(pulumi(p, "stack", "init"))
    try:
        yield p
    finally:
        release(control_plane, p)


def _shown(error: Exception) -> str:
    """How the CLI shows the program's unhandled `error`: the traceback's last line, `module.Class:
    message`, every line indented under the stack's diagnostics."""
    return textwrap.indent(f"{type(error).__module__}.{type(error).__qualname__}: {error}", "    ")


def _up_refused(project: Project, cp: ControlPlane, error: Exception,
                env: dict[str, str] | None = None) -> None:
    """`pulumi up` fails showing `error`, having created nothing: every object of the cluster is as it
    was, and the stack's state holds no resource but the stack itself (no provider, no object)."""
    before = snapshot(cp, project.manifests)
    result = pulumi(project, "up", "--yes", "--skip-preview", env=env)
    assert result.returncode != 0 and _shown(error) in result.stdout, \
        f"rc {result.returncode}; wanted:\n{_shown(error)}\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    after = snapshot(cp, project.manifests)
    assert {key for key in set(before) | set(after) if before.get(key) != after.get(key)} == set()
    state = json.loads(ok(pulumi(project, "stack", "export")))["deployment"]
    assert [r["type"] for r in state.get("resources") or [] if r["type"] != "pulumi:pulumi:Stack"] == []
    assert not state.get("pending_operations")


def _set(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    """An edit of the connector's `timeouts`."""
    return lambda timeouts: timeouts.update({key: value})


@pytest.mark.parametrize(("key", "edit"), [
    pytest.param("createTsk", _set("createTsk", "20s"), id="unknown-nested-key"),
    pytest.param("createTask", _set("createTask", "soon"), id="bad-value"),
])
def test_a_bad_stack_file_fails_with_the_plan_message_before_any_object(
        project: Project, control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch, key: str,
        edit: Callable[[dict[str, Any]], None]) -> None:
    committed = project.stack_file.read_text()
    document = yaml.safe_load(committed)
    edit(document["config"]["graphfleet:connector"]["timeouts"])
    project.stack_file.write_text(yaml.safe_dump(document))
    try:
        # What `graphfleet plan` says of the file, named as the program names it: relative to the project.
        monkeypatch.chdir(project.dir)
        with pytest.raises(ConfigError) as planned:
            load_stack_config(project.stack_file.relative_to(project.dir))
        assert f"stacks/Pulumi.{STACK}.yaml: graphfleet:connector.timeouts.{key}: " in str(planned.value)
        _up_refused(project, control_plane, planned.value)
    finally:
        project.stack_file.write_text(committed)


def test_a_missing_crd_is_named_with_what_installs_it_before_any_object(
        project: Project, control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    cp = control_plane
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/nodepools.karpenter.sh"
    assert cp.request("DELETE", crd).status_code == 200
    try:
        cp.wait_for("the CRD deleted", lambda: cp.request("GET", crd).status_code == 404)
        monkeypatch.setenv("KUBECONFIG", project.env["KUBECONFIG"])  # as the program reads it
        with pytest.raises(PrerequisiteError) as refused:
            check(project.config)
        assert str(refused.value).splitlines()[1:] == [
            "  CRD nodepools.karpenter.sh is not installed: install Karpenter (kubernetes-sigs/karpenter) "
            "serving karpenter.sh/v1"]
        _up_refused(project, cp, refused.value)
    finally:
        cp.install_crds()
        # Established comes before the resource serves; the next test's provider lists it at once.
        served = "/apis/karpenter.sh/v1/nodepools"
        cp.wait_for(f"{served} served", lambda: cp.request("GET", served).status_code == 200)


def test_a_context_missing_from_the_kubeconfig_is_named_with_the_files_searched_before_any_object(
        project: Project, control_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fixture's own kubeconfig: the same cluster, under a context named otherwise than the stack file's.
    kubeconfig = str(control_plane.kubeconfig)
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    with pytest.raises(PrerequisiteError) as refused:
        check(project.config)
    context = project.config.kubernetes_context
    assert str(refused.value) == (
        f"kubernetes:context {context!r} is not a context of the kubeconfig ($KUBECONFIG: {kubeconfig}); "
        f"its contexts: graphfleet-test. Set kubernetes:context in the stack file to this datacenter's "
        f"context, or add {context!r} to the kubeconfig")
    _up_refused(project, control_plane, refused.value, env={**project.env, "KUBECONFIG": kubeconfig})


def test_stack_init_appends_only_the_salt_and_with_it_committed_the_cli_leaves_the_file_alone(
        project: Project, control_plane: ControlPlane, tmp_path: Path) -> None:
    """docs/stacks.md, "Creating a datacenter's stack: the `encryptionsalt:` line". `project`: the
    module's bootstrap (and its removal); this test's stacks live in a copy of their own."""
    p = scratch_project(control_plane, project.stack, tmp_path)
    # `stack init` edits the file in place: the committed bytes (comments included) and one line more.
    committed = {stack: stack_path(stack).read_bytes() for stack in STACKS}
    for stack in STACKS:
        initialized = dataclasses.replace(p, stack=stack)
        ok(pulumi(initialized, "stack", "init"))
        written = initialized.stack_file.read_bytes()
        assert written.startswith(committed[stack]) and _SALT_LINE.fullmatch(written[len(committed[stack]):])
    salted = p.stack_file.read_bytes()
    # Without the line every command mints a salt of its own and writes it.
    p.stack_file.write_bytes(committed[p.stack])
    ok(pulumi(p, "preview"))
    minted = p.stack_file.read_bytes()
    assert minted.startswith(committed[p.stack]) and _SALT_LINE.fullmatch(minted[len(committed[p.stack]):])
    assert minted != salted
    # The procedure: the line committed. Another state backend's `stack init` (with the same passphrase;
    # another one is refused), `preview` and `up` then leave the file byte for byte.
    p.stack_file.write_bytes(salted)
    state_backend = tmp_path / "another-backend"
    state_backend.mkdir()
    elsewhere = {**p.env, "PULUMI_BACKEND_URL": f"file://{state_backend}"}
    refused = pulumi(p, "stack", "init", env={**elsewhere, "PULUMI_CONFIG_PASSPHRASE": "another"})
    assert refused.returncode != 0 and "incorrect passphrase" in refused.stderr, refused.stderr
    ok(pulumi(p, "stack", "init", env=elsewhere))
    assert p.stack_file.read_bytes() == salted
    try:
        ok(pulumi(p, "preview"))
        assert p.stack_file.read_bytes() == salted
        ok(pulumi(p, "up", "--yes", "--skip-preview"))
        assert p.stack_file.read_bytes() == salted
    finally:
        pulumi(p, "destroy", "--yes", "--skip-preview")
    # `graphfleet plan` reads the salted file as the committed one (only `config:` is the stack's).
    assert load_stack_config(p.stack_file) == load_stack_config(stack_path(p.stack))
