"""Which graphs a project may serve: `GRAPHFLEET_GRAPH_ACCESS` maps a project (or project/domain) to the
graph URI prefixes its data services may load.

A connector serves many teams, and a graph-engine fleet reads whatever `graph_uri` it is given with
the engine's credentials, not the caller's. So the rule is checked at CreateTask, before the graph is
read: a refusal names the rule that applied and the prefixes the caller may use, and it reads the same
whether or not the refused graph exists (nothing of another team's is looked at).

    {"recsys": ["s3://graphs/recsys/"], "recsys/production": ["s3://graphs/recsys/prod/"]}

The most specific rule wins (`project/domain` over `project`). With no rules at all every graph is
allowed: a single-team connector (and local development). Prefixes end in '/', so `s3://graphs/a/`
never admits `s3://graphs/a-other/...`, and a URI with `.`/`..` segments is refused outright.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

ENV = "GRAPHFLEET_GRAPH_ACCESS"
_KEY = re.compile(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?(/[a-z0-9]([-a-z0-9_]*[a-z0-9])?)?$")


class GraphAccessDenied(ValueError):
    """The graph is outside what the caller's project/domain may serve; nothing was read."""


def normalize(uri: str) -> str:
    """`uri` with repeated '/' collapsed (after any `scheme://`); ValueError for '.' or '..' segments,
    which could step out of an allowed prefix."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    segments = rest.split("/")
    if any(segment in (".", "..") for segment in segments):
        raise GraphAccessDenied(f"graph_uri: {uri!r} has '.' or '..' segments; give the graph's plain URI")
    path = re.sub("/{2,}", "/", rest)
    return f"{scheme}://{path}" if sep else path


def check_rules(rules: Mapping[str, list[str]]) -> Mapping[str, list[str]]:
    """The rules, if each key is `project` or `project/domain` and each prefix a clean URI ending in '/'."""
    for key, prefixes in rules.items():
        if not _KEY.match(key):
            raise ValueError(f"{key!r} is not a project or project/domain")
        if not prefixes:
            raise ValueError(f"{key!r}: no prefixes; remove the rule to allow nothing, or list prefixes")
        for prefix in prefixes:
            if not prefix.endswith("/") or normalize(prefix) != prefix:
                raise ValueError(f"{key!r}: prefix {prefix!r} must be a plain URI ending in '/' "
                                 "(e.g. s3://graphs/team/)")
    return rules


def check_graph_access(graph_uri: str, owner: str, rules: Mapping[str, list[str]]) -> None:
    """Raise GraphAccessDenied unless `owner` (project/domain) may serve `graph_uri` under `rules`."""
    uri = normalize(graph_uri)
    if not rules:
        return
    project = owner.split("/", 1)[0]
    key = owner if owner in rules else project if project in rules else None
    if key is None:
        raise GraphAccessDenied(
            f"graph_uri: {owner} may not serve graphs on this connector: {ENV} has no rule for "
            f"{owner!r} or {project!r}; ask the platform team to add one")
    if not any(uri.startswith(prefix) for prefix in rules[key]):
        raise GraphAccessDenied(
            f"graph_uri: {graph_uri!r} is not under the prefixes {owner} may serve ({ENV} rule {key!r}: "
            f"{', '.join(rules[key])}); use a graph under one of them")
