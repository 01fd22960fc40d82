"""Shared pytest fixtures: keep this small and generic."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.k8s_schema import validate_manifests
from infra.render import Rendered, render
from tests.control_plane import control_plane  # noqa: F401 - the session's real control plane
from tests.shared_data import PLANETOID_DIR


@pytest.fixture
def render_valid() -> Callable[..., Rendered]:
    """Render a Pulumi program under mocks and fail the test if any manifest breaks the schema."""

    def run(program: Callable[[], None], **kwargs: Any) -> Rendered:
        rendered = render(program, **kwargs)
        errors = validate_manifests(rendered.manifests())
        assert not errors, "rendered manifests fail the Kubernetes schema:\n" + "\n".join(errors)
        return rendered

    return run


@pytest.fixture
def planetoid_dir() -> Path:
    """The read-only Cora data in Planetoid format (read it in place; never copy it into the repo)."""
    if not (PLANETOID_DIR / "ind.cora.x").exists():
        pytest.fail(f"Cora data not found at {PLANETOID_DIR}: the tests read shared/ beside the checkout; "
                    "set GRAPHFLEET_SHARED_DIR to where it is")
    return PLANETOID_DIR
