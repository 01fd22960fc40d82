"""The graph-engine image allow-list: one rule (`infra.images`) for the stack config, the policy check
and the connector; what each of them refuses, and how the refusal names the fix."""

from __future__ import annotations

import pytest

from flyte_agent.settings import Settings, SettingsError
from infra.images import check_allow_list_entry, check_image

ALLOW = ["reg.example.com/graphfleet/graph-engine", "reg.example.com:5000/team/", "trusted.io/"]


@pytest.mark.parametrize("image", ["reg.example.com/graphfleet/graph-engine:1.2.0",
                                   "reg.example.com/graphfleet/graph-engine@sha256:" + "a" * 64,
                                   "reg.example.com:5000/team/exp/any:2",
                                   "trusted.io/anyone/anything:3"])
def test_allowed_images(image: str) -> None:
    assert check_image(image, ALLOW) == image


@pytest.mark.parametrize(("image", "why"), [
    ("reg.example.com/graphfleet/graph-engine:latest", "not pinned"),
    ("reg.example.com/graphfleet/graph-engine", "not pinned"),
    ("reg.example.com/graphfleet/graph-engine2:1", "not in the graph-engine image allow-list"),
    ("reg.example.com/graphfleet/graph-engine@sha256:abc", "digest must be sha256"),
    ("reg.example.com:5000/team:1", "not in the graph-engine image allow-list"),
    ("reg.example.com:5000/teamster/x:1", "not in the graph-engine image allow-list"),
])
def test_refused_images(image: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_image(image, ALLOW)


def test_a_refusal_names_where_to_allow_the_repository() -> None:
    with pytest.raises(ValueError, match=r"add 'evil\.io/ge' to graphfleet:connector\.imageAllowList$"):
        check_image("evil.io/ge:1", ALLOW)


@pytest.mark.parametrize("entry", ["reg.example.com/graph-engine:1", "reg.example.com/ge@sha256:" + "a" * 64,
                                   "Reg/GE", "/"])
def test_entries_must_be_repositories_or_prefixes(entry: str) -> None:
    with pytest.raises(ValueError, match="must be registry/repository without tag or digest"):
        check_allow_list_entry(entry)


def test_the_connector_applies_the_same_rule_and_exempts_its_default_image() -> None:
    settings = Settings(image="reg.example.com/graphfleet/graph-engine:0.1.0", image_allowlist=ALLOW)
    assert settings.check_image("reg.example.com/graphfleet/graph-engine:0.2.0")
    for image, why in [("reg.example.com/graphfleet/graph-engine", "not pinned"),
                       ("reg.example.com/graphfleet/graph-engine-evil:1", "GRAPHFLEET_IMAGE_ALLOWLIST")]:
        with pytest.raises(ValueError, match=why):
            settings.check_image(image)
    # The default is checked against the datacenter's allow-list when the connector is deployed.
    assert Settings(image="graphfleet/graph-engine:latest").check_image("graphfleet/graph-engine:latest")
    with pytest.raises(SettingsError, match="GRAPHFLEET_IMAGE_ALLOWLIST: .*'reg/ge:1' must be registry"):
        Settings.from_env({"GRAPHFLEET_IMAGE_ALLOWLIST": "reg/ge:1"})
