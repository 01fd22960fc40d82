"""Every shipped datacenter stack renders through the real program and passes schema and policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from infra import policy
from infra.config import STACKS_DIR, load_stack_config, stack_name
from infra.datacenter import program
from infra.render import Rendered

STACKS = sorted(STACKS_DIR.glob("Pulumi.*.yaml"))


@pytest.mark.parametrize("path", STACKS, ids=[stack_name(p) for p in STACKS])
def test_stack_renders_and_validates_clean(path: Path, render_valid: Callable[..., Rendered]) -> None:
    config = load_stack_config(path)
    rendered = render_valid(lambda: program(config), stack=stack_name(path))
    assert [str(v) for v in policy.check(rendered.manifests())] == []
    statefulsets = rendered.of_kind("StatefulSet")
    assert {s["metadata"]["name"] for s in statefulsets} == {s.name for s in config.shared_services}
    assert set(rendered.outputs["shared_services"]) == {s.name for s in config.shared_services}
    assert set(rendered.outputs["queues"]) == {p.name for p in config.gpu_pools}


def test_there_are_two_datacenters() -> None:
    assert [stack_name(p) for p in STACKS] == ["ltx1", "lva1"]
