"""`graphfleet diff`: what `pulumi up` would do, object by object and field by field, for a reviewer."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import cli
from infra.config import STACKS_DIR
from infra.stack_diff import ABSENT, StackObject, diff_stacks, field_changes


@pytest.fixture(scope="module")
def ltx1() -> list[StackObject]:
    return cli.render_objects("ltx1")[1]


def _edited(objects: list[StackObject], key: str,
            edit: Callable[[dict[str, Any]], None]) -> list[StackObject]:
    out = []
    for obj in objects:
        manifest = copy.deepcopy(dict(obj.manifest))
        if obj.key == key:
            edit(manifest)
        out.append(StackObject(obj.urn, obj.type, manifest))
    return out


STS = "StatefulSet/graphfleet-shared/member-graph"


@pytest.mark.parametrize(("edit", "field"), [
    (lambda m: m["spec"]["selector"]["matchLabels"].update(tier="a"), 'spec.selector.matchLabels.tier'),
    (lambda m: m["spec"].update(serviceName="other"), "spec.serviceName"),
    (lambda m: m["spec"].update(volumeClaimTemplates=[{"metadata": {"name": "data"}}]),
     "spec.volumeClaimTemplates"),
    (lambda m: m["spec"].update(podManagementPolicy="OrderedReady"), "spec.podManagementPolicy"),
], ids=["selector", "serviceName", "volumeClaimTemplates", "podManagementPolicy"])
def test_immutable_statefulset_fields_force_a_replace(ltx1: list[StackObject], edit: Callable[..., None],
                                                      field: str) -> None:
    diff = diff_stacks(ltx1, _edited(ltx1, STS, edit))
    [change] = diff.changes
    assert (change.action, change.key) == ("replace", STS)
    assert [(f.path, f.replaces) for f in change.fields] == [(field, True)]
    assert any(w.startswith(f"{STS} is replaced: the graph service is down until it is re-created") for w in
               diff.warnings)


def test_a_pod_template_change_is_an_update_named_by_container_and_env_name(ltx1: list[StackObject]) -> None:
    def edit(m: dict[str, Any]) -> None:
        container = m["spec"]["template"]["spec"]["containers"][0]
        container["image"] = "docker.ltx1.example.com/graphfleet/graph-engine:0.2.0"
        for env in container["env"]:
            if env["name"] == "HOME":
                env["value"] = "/tmp"

    [change] = diff_stacks(ltx1, _edited(ltx1, STS, edit)).changes
    assert change.action == "update"   # a rolling update: pulumi-kubernetes replaces only Pods for these
    assert [f.text() for f in change.fields] == [
        'spec.template.spec.containers[graph-engine].env[HOME].value: "/scratch" -> "/tmp"',
        'spec.template.spec.containers[graph-engine].image: "docker.ltx1.example.com/graphfleet/graph-engine:'
        '0.1.0" -> "docker.ltx1.example.com/graphfleet/graph-engine:0.2.0"']


def test_json_in_a_string_and_multi_line_text_are_compared_inside() -> None:
    old = {"env": [{"name": "MAP", "value": '{"a": [1, 2], "b": "x"}'}], "data": {"conf": "a: 1\nb: 2\n"}}
    new = {"env": [{"name": "MAP", "value": '{"a": [1, 2, 3], "b": "x"}'}], "data": {"conf": "a: 1\nb: 3\n"}}
    assert [(p, a, b) for p, _, a, b in field_changes(old, new)] == [
        ("data.conf", "a: 1\nb: 2\n", "a: 1\nb: 3\n"),
        ("env[MAP].value(json).a[+]", ABSENT, 3),
    ]


def test_a_configmap_data_change_is_a_replace_as_pulumi_kubernetes_decides() -> None:
    def config_map(data: str) -> StackObject:
        return StackObject("kubernetes:core/v1:ConfigMap::cm", "kubernetes:core/v1:ConfigMap",
                           {"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "c", "namespace": "n"}, "data": {"k": data}})

    [change] = diff_stacks([config_map("a")], [config_map("b")]).changes
    assert change.action == "replace"
    assert change.fields[0].text() == 'data.k: "a" -> "b" (forces replace)'


def test_node_patches_are_patches_not_created_nodes(ltx1: list[StackObject]) -> None:
    nodes = [o for o in ltx1 if o.manifest["kind"] == "Node"]
    assert nodes and all(o.patch for o in nodes)
    diff = diff_stacks([o for o in ltx1 if o.manifest["kind"] != "Node"], ltx1)
    assert {c.action for c in diff.changes} == {"patch"}
    diff = diff_stacks(ltx1, [o for o in ltx1 if o.key != "Node/ltx1-gpu-a100-04"])
    assert [(c.action, c.key) for c in diff.changes] == [("unpatch", "Node/ltx1-gpu-a100-04")]
    assert "the node leaves its GPU pool" in diff.warnings[0]


def test_a_priority_class_value_change_is_flagged_as_failing(ltx1: list[StackObject]) -> None:
    key = "PriorityClass/graphfleet-ltx1-a100-training"
    diff = diff_stacks(ltx1, _edited(ltx1, key, lambda m: m.update(value=2000)))
    assert [c.action for c in diff.changes] == ["update"]
    assert diff.warnings == [f"{key}: value is immutable in the API server and pulumi-kubernetes does not "
                             "replace a PriorityClass for it: `pulumi up` fails; rename the class instead"]


def _write(tmp_path: Path, stack: str, edit: Callable[[dict[str, Any]], None]) -> Path:
    document = yaml.safe_load((STACKS_DIR / f"Pulumi.{stack}.yaml").read_text())
    edit(document["config"])
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_renaming_the_shared_namespace_replaces_its_services_and_warns_loudly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "ltx1", lambda c: c["graphfleet:namespaces"].update(sharedServices="graphs"))
    assert cli.main(["diff", "ltx1", str(path), "--markdown"]) == cli.EXIT_DESTRUCTIVE
    out = capsys.readouterr().out
    assert out.startswith(f"### graphfleet diff: ltx1 -> {path}\n")
    assert ("| replace | `StatefulSet/graphs/member-graph` "
            "(was `StatefulSet/graphfleet-shared/member-graph`) |") in out
    assert "> [!WARNING]" in out
    assert "> - StatefulSet/graphfleet-shared/member-graph is replaced: the graph service is down" in out
    assert '! metadata.namespace: "graphfleet-shared" -> "graphs" (forces replace)' in out


def test_renaming_the_data_namespace_warns_that_running_fleets_are_orphaned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "ltx1", lambda c: c["graphfleet:namespaces"].update(dataServices="fleets"))
    assert cli.main(["diff", "ltx1", str(path)]) == cli.EXIT_DESTRUCTIVE
    out = capsys.readouterr().out.splitlines()
    assert ("WARNING: Deployment/graphfleet-system/graphfleet-connector moves its ephemeral fleets from "
            "namespace graphfleet-data to fleets: the fleets already in graphfleet-data are orphaned "
            "(no longer listed, garbage-collected or torn down by DeleteTask); release them before this "
            "change") in out
    assert "- unpatch Namespace/graphfleet-data" in out


def test_deleting_a_namespace_the_stack_creates_warns_about_everything_in_it() -> None:
    def namespace(name: str) -> StackObject:
        return StackObject(f"kubernetes:core/v1:Namespace::{name}", "kubernetes:core/v1:Namespace",
                           {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    diff = diff_stacks([namespace("data")], [])
    assert [(c.action, c.key) for c in diff.changes] == [("delete", "Namespace/data")]
    assert diff.warnings[0].startswith("Namespace/data is deleted: Kubernetes deletes every object in it")


def test_the_new_side_is_checked_and_violations_exit_1(
        ltx1: list[StackObject], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _edited(ltx1, STS, lambda m: m["spec"].update(replicas=7))
    sides = iter([("ltx1", ltx1, {}), ("ltx1", broken, {})])
    monkeypatch.setattr(cli, "render_objects", lambda _stack: next(sides))
    assert cli.main(["diff", "ltx1", "ltx1-edited"]) == cli.EXIT_VIOLATIONS
    out = capsys.readouterr().out
    assert (f"NEW STACK FAILS: policy: partition-coverage: {STS}: servers think there are 8 replicas but the "
            f"StatefulSet runs 7: partitions would be missed") in out


def test_a_bad_stack_on_either_side_exits_2_and_renders_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "ltx1", lambda c: c["graphfleet:gpuPools"][1]["nodes"].append("ltx1-gpu-a100-01"))
    for args in (["diff", "ltx1", str(path)], ["diff", str(path), "ltx1"]):
        assert cli.main(args) == cli.EXIT_BAD_CONFIG
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(
            f"error: {path}: graphfleet:gpuPools: node 'ltx1-gpu-a100-01' is in pools")
