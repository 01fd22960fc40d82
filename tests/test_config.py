"""Stack files: the shipped ones load; each mistake fails with the file, the key path and the fix."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import (
    STACKS_DIR,
    ConfigError,
    config_items,
    load_stack_config,
    stack_config_from_mapping,
    stack_path,
)


def _stack(name: str) -> dict[str, Any]:
    return yaml.safe_load((STACKS_DIR / f"Pulumi.{name}.yaml").read_text())


def _fails(tmp_path: Path, change: Callable[[dict[str, Any]], None], stack: str = "ltx1") -> str:
    document = copy.deepcopy(_stack(stack))
    change(document["config"])
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as err:
        load_stack_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


def test_shipped_stacks_load_and_differ() -> None:
    ltx1, lva1 = load_stack_config(stack_path("ltx1")), load_stack_config(stack_path("lva1"))
    assert {p.kind for p in ltx1.gpu_pools} == {"static"}
    assert {p.kind for p in lva1.gpu_pools} == {"karpenter"}
    assert ltx1.shared_services and lva1.shared_services
    assert ltx1.gpu_pools[0].gpu_capacity == 32  # 4 nodes x 8 A100s


def test_config_items_round_trip_through_the_file_format() -> None:
    config = load_stack_config(stack_path("lva1"))
    assert stack_config_from_mapping(config_items(config), "x", expected_name="lva1") == config


@pytest.mark.parametrize(("change", "expected"), [
    (lambda c: c["graphfleet:gpuPools"][1].update(gpusPerNode=0),
     "graphfleet:gpuPools[1].gpusPerNode: must be 1-16, got 0"),
    (lambda c: c["graphfleet:connector"].update(replicas=0),
     "graphfleet:connector.replicas: must be at least 2"),
    (lambda c: c["graphfleet:sharedServices"][0]["spec"].update(replicas=64),
     "graphfleet:sharedServices[0].spec: replicas (64) exceeds partitions (32): ordinals 32..63 would serve "
     "no partition; set replicas <= 32 or repartition the graph"),
    (lambda c: c["graphfleet:sharedServices"][0]["spec"].pop("partitions"),
     "graphfleet:sharedServices[0].spec: set partitions to the graph's partition count"),
    (lambda c: c["graphfleet:sharedServices"][0]["spec"].update(memory="-64Gi"),
     "graphfleet:sharedServices[0].spec.memory: memory must be a positive Kubernetes quantity such as "
     "'512Mi' or '32Gi', got '-64Gi'"),
    (lambda c: c["graphfleet:sharedServices"][0]["spec"].update(memory="64m"),
     "graphfleet:sharedServices[0].spec.memory: memory '64m' is in millibytes; did you mean 64Mi?"),
    (lambda c: c["graphfleet:gpuPools"][0]["teams"][0].update(memory="lots"),
     "graphfleet:gpuPools[0].teams[0].memory: memory must be a positive Kubernetes quantity"),
    (lambda c: c["graphfleet:sharedServices"][0]["spec"].update(graphUrl="s3://x/y"),
     "graphfleet:sharedServices[0].spec.graphUrl: unknown key; remove it or check its spelling"),
    (lambda c: c.update({"graphfleet:gpuPool": []}),
     "graphfleet:gpuPool: unknown key; remove it or check its spelling"),
    (lambda c: c["graphfleet:connector"].update(replicaCount=3),
     "graphfleet:connector.replicaCount: unknown key"),
    (lambda c: c["graphfleet:gpuPools"][0].update(name="A100"),
     "graphfleet:gpuPools[0].name: 'A100' is not a DNS-1035 label"),
    (lambda c: c["graphfleet:namespaces"].update(training="ml_training"),
     "graphfleet:namespaces.training: 'ml_training' is not a DNS-1035 label"),
    (lambda c: c["graphfleet:gpuPools"][1].update(name="a100"),
     "graphfleet:gpuPools: duplicate pool name 'a100': each must be unique"),
    (lambda c: c["graphfleet:gpuPools"][1]["nodes"].append("ltx1-gpu-a100-02"),
     "graphfleet:gpuPools: node 'ltx1-gpu-a100-02' is in pools 'a100' and 'v100' ([1].nodes[2]); a node "
     "belongs to one pool"),
    (lambda c: c["graphfleet:sharedServices"][0]["spec"].update(ttlSeconds=1209600),
     "graphfleet:sharedServices[0].spec: ttlSeconds is for ephemeral fleets: a shared service runs until "
     "it is removed from sharedServices"),
    (lambda c: c["graphfleet:gpuPools"][0]["teams"][1].update(name="feed-ranking"),
     "graphfleet:gpuPools[0]: duplicate team name 'feed-ranking'"),
    (lambda c: c["graphfleet:gpuPools"][0]["teams"][0].update(gpus=17),
     "graphfleet:gpuPools[0]: teams' GPU quotas add up to 33 but the pool holds 32 (4 nodes x 8 GPUs): "
     "lower a team's gpus or add nodes"),
    (lambda c: c.update({"graphfleet:graphEngineImage": "docker.io/someone/graph-engine:1.0"}),
     "graphfleet:graphEngineImage: image 'docker.io/someone/graph-engine:1.0' is not in the graph-engine "
     "image allow-list"),
    (lambda c: c.update({"graphfleet:graphEngineImage":
                         "docker.ltx1.example.com/graphfleet/graph-engine-fork:0.1.0"}),
     "graphfleet:graphEngineImage: image 'docker.ltx1.example.com/graphfleet/graph-engine-fork:0.1.0' is "
     "not in"),
    (lambda c: c["graphfleet:sharedServices"][0]["spec"].update(image="evil.example.com/graph-engine:1"),
     "graphfleet:sharedServices: sharedServices[0].spec.image (member-graph): image "
     "'evil.example.com/graph-engine:1' is not in the graph-engine image allow-list"),
    (lambda c: c["graphfleet:connector"].update(image="docker.ltx1.example.com/graphfleet/connector"),
     "graphfleet:connector.image: image 'docker.ltx1.example.com/graphfleet/connector' is not pinned"),
    (lambda c: c["graphfleet:gpuPools"][0].update(kind="karpenter"),
     "graphfleet:gpuPools[0]: kind karpenter needs `karpenter` (instanceTypes, maxNodes), not `nodes`"),
    (lambda c: c["graphfleet:sharedServices"][0]["spec"].update(graphUri="/data/member-graph"),
     "graphfleet:sharedServices[0].spec: graphUri '/data/member-graph' is a local path, which pods cannot "
     "read"),
    (lambda c: c["graphfleet:datacenter"].update(name="lva1"),
     "graphfleet:datacenter.name: 'lva1' does not match the stack 'ltx1'"),
    (lambda c: c["graphfleet:connector"]["secrets"].pop("passphrase"),
     "graphfleet:connector.secrets: set exactly one of passphrase (a Secret key) or secretsProvider"),
    (lambda c: c.update({"datacenter": "ltx1"}),
     "datacenter: unknown key; stack config keys are namespaced, write graphfleet:datacenter"),
    (lambda c: c.pop("graphfleet:connector"),
     "graphfleet:connector: Field required"),
], ids=["gpus-per-node-0", "replicas-0", "partitions-not-covered", "partitions-unknown", "negative-memory",
        "millibyte-memory", "malformed-quota-memory", "unknown-spec-key", "unknown-top-key",
        "unknown-connector-key", "invalid-pool-name", "invalid-namespace", "duplicate-pools",
        "node-in-two-pools", "ttl-on-shared-service",
        "duplicate-teams",
        "quota-above-capacity", "image-outside-allow-list", "image-prefix-is-not-a-match",
        "shared-image-outside-allow-list", "image-not-pinned", "kind-mismatch", "local-graph-uri",
        "datacenter-mismatch", "no-secrets-provider", "unnamespaced-key", "missing-connector"])
def test_bad_stack_fails_naming_key_and_fix(tmp_path: Path, change: Callable[[dict[str, Any]], None],
                                            expected: str) -> None:
    assert _fails(tmp_path, change).startswith(expected)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    def two_mistakes(c: dict[str, Any]) -> None:
        c["graphfleet:gpuPools"][1]["gpusPerNode"] = 32
        c["graphfleet:connector"]["replicas"] = 1

    lines = _fails(tmp_path, two_mistakes).splitlines()
    assert len(lines) == 2
    assert "gpuPools[1].gpusPerNode: must be 1-16, got 32" in lines[0]


def test_other_namespaces_are_left_to_their_owners() -> None:
    config = _stack("ltx1")["config"]
    assert config["kubernetes:context"] == "ltx1-prod"
    assert stack_config_from_mapping(config, "ltx1").datacenter.name == "ltx1"


def test_structured_values_arrive_as_json_from_the_engine() -> None:
    import json

    config = _stack("lva1")["config"]
    as_engine = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    assert stack_config_from_mapping(as_engine, "lva1", "lva1") == stack_config_from_mapping(config, "lva1")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such stack file; known stacks: .*ltx1.*lva1"):
        load_stack_config(tmp_path / "Pulumi.nope.yaml")
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text("config: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_stack_config(bad)
    bad.write_text("graphfleet:datacenter: {}\n")
    with pytest.raises(ConfigError, match="a stack file is a mapping with a `config:` mapping"):
        load_stack_config(bad)
