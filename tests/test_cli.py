"""`graphfleet plan` / `graphfleet diff` run as a user runs them: the installed console script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from infra.config import STACKS_DIR

GRAPHFLEET = str(Path(sys.executable).with_name("graphfleet"))


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRAPHFLEET, *args], cwd=cwd, capture_output=True, text=True, timeout=180)


def test_plan_prints_every_object_and_passes(tmp_path: Path) -> None:
    result = _run("plan", "ltx1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "StatefulSet" in result.stdout and "member-graph" in result.stdout
    assert "replicas=8 partitions=32" in result.stdout
    assert "gpus=16" in result.stdout  # feed-ranking's A100 quota
    # The GPU nodes exist before the stack: it patches them, it does not create them.
    assert re.search(r"^Node \(patch\) +- +ltx1-gpu-a100-01 .* kubelet registers "
                     r"taints=nvidia.com/gpu=present:NoSchedule$", result.stdout, re.M)
    assert "10 existing object(s) patched" in result.stdout   # 6 GPU nodes, 4 namespaces
    assert re.search(r"ltx1: \d+ objects, schema and policy checks passed", result.stderr)


def test_plan_json_emits_the_manifests(tmp_path: Path) -> None:
    result = _run("plan", str(STACKS_DIR / "Pulumi.lva1.yaml"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifests = json.loads(result.stdout)
    kinds = [m["kind"] for m in manifests]
    assert (kinds.count("StatefulSet"), kinds.count("NodePool"), kinds.count("ClusterQueue")) == (2, 2, 4)


def test_problems_are_named_one_per_line() -> None:
    from infra.cli import problems

    found = problems([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}, "data": {"a": 1}}])
    assert found == [
        "schema: ConfigMap/<no metadata.name>: data.a: 1 is not of type 'string', 'null'",
        "policy: metadata-name: ConfigMap/<no metadata.name>: no metadata.name: a retried create could not "
        "adopt it",
    ]


def test_plan_of_a_bad_stack_names_the_key_and_exits_2(tmp_path: Path) -> None:
    document = yaml.safe_load((STACKS_DIR / "Pulumi.lva1.yaml").read_text())
    document["config"]["graphfleet:gpuPools"][0]["teams"][0]["gpus"] = 100
    path = tmp_path / "Pulumi.lva1.yaml"
    path.write_text(yaml.safe_dump(document))
    result = _run("plan", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"error: {path}: graphfleet:gpuPools[0]: teams' GPU quotas add up to 116 but the pool holds 48 "
        "(6 nodes x 8 GPUs): lower a team's gpus or add nodes")


def test_diff_says_update_create_delete_warns_and_exits_3(tmp_path: Path) -> None:
    document = yaml.safe_load((STACKS_DIR / "Pulumi.lva1.yaml").read_text())
    config = document["config"]
    config["graphfleet:sharedServices"][0]["spec"]["replicas"] = 8
    config["graphfleet:sharedServices"].pop(1)
    config["graphfleet:gpuPools"][1]["teams"].append({"name": "search", "gpus": 4})
    path = tmp_path / "Pulumi.lva1.yaml"
    path.write_text(yaml.safe_dump(document))
    result = _run("diff", "lva1", str(path), cwd=tmp_path)
    assert result.returncode == 3, result.stderr   # destructive changes
    lines = result.stdout.splitlines()
    at = lines.index("~ update StatefulSet/graphfleet-shared/job-graph")
    assert lines[at + 1:at + 3] == [
        "    spec.replicas: 4 -> 8",
        '    spec.template.spec.containers[graph-engine].command[--replicas]: "4" -> "8"']
    assert "+ create ClusterQueue/graphfleet-lva1-l4-search" in lines
    assert "+ create LocalQueue/graphfleet-training/l4-search" in lines
    assert "- delete StatefulSet/graphfleet-shared/company-graph" in lines
    assert "- delete Service/graphfleet-shared/company-graph" in lines
    assert any(line.startswith("WARNING: StatefulSet/graphfleet-shared/job-graph is resharded in place "
                               "(--replicas 4 -> 8)") for line in lines)
    assert "2 to create, 2 to update, 4 to delete; 2 destructive-change warning(s)" in result.stderr
    assert _run("diff", "lva1", str(path), "--allow-destructive", cwd=tmp_path).returncode == 0


def test_plan_of_a_stack_without_a_kubernetes_context_exits_2_naming_it(tmp_path: Path) -> None:
    """Without the context the stack's provider would use whatever context is current: refused first."""
    document = yaml.safe_load((STACKS_DIR / "Pulumi.ltx1.yaml").read_text())
    del document["config"]["kubernetes:context"]
    path = tmp_path / "Pulumi.ltx1.yaml"
    path.write_text(yaml.safe_dump(document))
    result = _run("plan", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{path}: kubernetes:context: not set" in result.stderr
    assert result.stdout == ""  # nothing rendered
