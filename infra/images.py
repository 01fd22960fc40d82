"""Container image references: parsing, pinning, and the graph-engine image allow-list rule.

One rule for every place that decides whether a fleet may run an image: the stack config (the
datacenter's default image and its shared services), the policy check over rendered manifests, and
the connector (an image a task names).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.\-]*[a-z0-9])?(:[0-9]+)?$")
_REPOSITORY = re.compile(r"^[a-z0-9]([a-z0-9.\-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._\-][a-z0-9]+)*)+$")
# Where a datacenter's allow-list is written; the default fix a refusal names.
STACK_ALLOW_LIST = "graphfleet:connector.imageAllowList"


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """`registry/repo:tag@sha256:...` -> (repository, tag, digest); raises if it is not pinned."""
    rest, _, digest = image.partition("@")
    repository, tag = rest, None
    head, sep, tail = rest.rpartition(":")
    if sep and "/" not in tail:
        repository, tag = head, tail
    if not _REPOSITORY.match(repository):
        raise ValueError(f"image {image!r}: {repository!r} is not a registry/repository reference "
                         f"(write registry.example.com/graphfleet/graph-engine:1.2.0)")
    if digest and not _DIGEST.match(digest):
        raise ValueError(f"image {image!r}: digest must be sha256:<64 hex digits>")
    if tag is not None and not _TAG.match(tag):
        raise ValueError(f"image {image!r}: {tag!r} is not a valid tag")
    if not digest and tag in (None, "latest"):
        raise ValueError(f"image {image!r} is not pinned: add a version tag (:1.2.0) or a digest "
                         f"(@sha256:...); 'latest' changes under running fleets")
    return repository, tag, digest or None


def check_allow_list_entry(entry: str) -> str:
    """An allow-list entry: a repository without tag or digest, or a registry or path ending in '/'."""
    prefix = entry.removesuffix("/")
    if not (_REPOSITORY.match(prefix) or (entry.endswith("/") and _REGISTRY.match(prefix))):
        raise ValueError(f"entry {entry!r} must be registry/repository without tag or digest "
                         f"(or end with '/' to allow every repository under it)")
    return entry


def check_image(image: str, allow_list: Iterable[str], where: str = STACK_ALLOW_LIST) -> str:
    """`image` if it is pinned and its repository is allowed: equal to an entry, or under an entry
    ending in '/'. Raises naming `where` the allow-list is set.

    Exact repository match, so `.../graph-engine-evil` is not allowed by `.../graph-engine`.
    """
    repository, _, _ = split_image(image)
    allowed = list(allow_list)
    for entry in allowed:
        if repository == entry or (entry.endswith("/") and repository.startswith(entry)):
            return image
    raise ValueError(f"image {image!r} is not in the graph-engine image allow-list {allowed}: use an "
                     f"allowed repository or add {repository!r} to {where}")
