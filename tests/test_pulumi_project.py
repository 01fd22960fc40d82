"""Pulumi.yaml and infra/config.py agree, and `pulumi install` finds everything `pulumi up` imports.

Pulumi requires every key Pulumi.yaml declares without a `default` (pulumi/pulumi
pkg/workspace/config_project.go: "Stack '...' is missing configuration value ..."), validates each
stack value against the declared `type` (sdk/go/common/workspace/project.go `ValidateConfigValue`),
and installs `requirements.txt` with the pip toolchain (sdk/python/toolchain/pip.go).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter
from pydantic_core import PydanticUndefined

from infra.config import KUBE_CONTEXT, StackConfig, load_stack_config, stack_path
from infra.config_fields import NAMESPACE

ROOT = Path(__file__).resolve().parents[1]
PROJECT = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
DECLARED: dict[str, dict[str, Any]] = PROJECT["config"]
# Our keys as a stack file spells them (without the `graphfleet:` prefix), with their pydantic fields.
FIELDS = {info.alias.removeprefix(f"{NAMESPACE}:"): (name, info)
          for name, info in StackConfig.model_fields.items()
          if info.alias and info.alias.startswith(f"{NAMESPACE}:")}


def test_every_key_a_stack_may_set_is_declared_and_nothing_else() -> None:
    assert set(DECLARED) == set(FIELDS)
    for stack in ("ltx1", "lva1"):
        keys = yaml.safe_load(stack_path(stack).read_text())["config"]
        ours = {k.removeprefix(f"{NAMESPACE}:") for k in keys if k.startswith(f"{NAMESPACE}:")}
        assert ours <= set(DECLARED), (stack, ours - set(DECLARED))


@pytest.mark.parametrize("key", sorted(FIELDS))
def test_required_in_pulumi_exactly_when_required_in_config(key: str) -> None:
    _, info = FIELDS[key]
    declared = DECLARED[key]
    assert ("default" not in declared) == info.is_required(), key
    if "default" in declared:
        # The declared default means config.py's own default.
        default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
        assert default is not PydanticUndefined
        parsed = TypeAdapter(info.annotation).validate_python(declared["default"])
        assert parsed == default, key


@pytest.mark.parametrize("key", sorted(FIELDS))
def test_declared_types_accept_what_the_stacks_set(key: str) -> None:
    declared = DECLARED[key]
    kinds = {"object": dict, "array": list, "string": str}
    for stack in ("ltx1", "lva1"):
        value = yaml.safe_load(stack_path(stack).read_text())["config"].get(f"{NAMESPACE}:{key}")
        if value is not None:
            assert isinstance(value, kinds[declared["type"]]), (stack, key)
            if declared["type"] == "array":
                assert all(isinstance(v, kinds[declared["items"]["type"]]) for v in value)


def test_the_context_is_required_though_pulumi_cannot_declare_it() -> None:
    assert KUBE_CONTEXT not in DECLARED
    assert StackConfig.model_fields["kubernetes_context"].is_required()
    assert load_stack_config(stack_path("ltx1")).kubernetes_context == "ltx1-prod"


def test_pulumi_install_installs_the_lock_and_the_project() -> None:
    """`main: infra/` runs infra/__main__.py with infra/ (not the root) on sys.path, so `import infra`
    works only if requirements.txt installs the project; resolved offline against this venv."""
    assert PROJECT["main"] == "infra/" and PROJECT["runtime"]["options"]["toolchain"] == "pip"
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == ["-r requirements.lock", "-e ."]
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                             "--no-build-isolation", "-r", "requirements.txt"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Would install graphfleet" in result.stdout
