"""Kubernetes object names: validation with messages that say the fix, and deterministic shortening.

A fleet's name comes from a workflow execution and may be long; Kubernetes caps most names at 63
characters, StatefulSets effectively at 52 (the controller adds `-<10-char hash>` to the
`controller-revision-hash` label, which is capped at 63). Shortening keeps a readable prefix and
appends a hash of the full name, so two long names that share a prefix still get distinct names and
the same name always maps to the same object (a retried create adopts what exists).
"""

from __future__ import annotations

import hashlib
import re

LABEL_MAX = 63
SUBDOMAIN_MAX = 253
# 63 minus "-" and the 10-character revision hash the StatefulSet controller appends in a label.
STATEFULSET_NAME_MAX = LABEL_MAX - 11
HASH_CHARS = 8
CLUSTER_DOMAIN = "cluster.local"

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIX = "use lowercase letters, digits and '-', starting and ending with a letter or digit"


def check_label(value: str, field: str) -> str:
    """A DNS-1123 label (namespaces, most names): returns `value` or raises naming `field`."""
    if len(value) > LABEL_MAX or not _LABEL.match(value):
        raise ValueError(f"{field}: {value!r} is not a DNS-1123 label: {_FIX}, "
                         f"at most {LABEL_MAX} characters")
    return value


def check_dns1035_label(value: str, field: str) -> str:
    """A DNS-1035 label (Service names): like a DNS-1123 label, but must start with a letter."""
    if len(value) > LABEL_MAX or not _DNS1035.match(value):
        raise ValueError(f"{field}: {value!r} is not a DNS-1035 label: {_FIX}, starting with a letter, "
                         f"at most {LABEL_MAX} characters")
    return value


def check_subdomain(value: str, field: str) -> str:
    """A DNS-1123 subdomain (most object names): dot-separated labels, at most 253 characters."""
    if len(value) > SUBDOMAIN_MAX or not all(_LABEL.match(part) for part in value.split(".")):
        raise ValueError(f"{field}: {value!r} is not a DNS-1123 subdomain: dot-separated parts where each "
                         f"part may {_FIX}; at most {SUBDOMAIN_MAX} characters")
    return value


def check_env_name(value: str, field: str) -> str:
    """An environment variable name a pod may set: letters, digits, '_', not starting with a digit."""
    if not _ENV_NAME.match(value):
        raise ValueError(f"{field}: {value!r} is not an environment variable name (letters, digits, '_', "
                         "not starting with a digit)")
    return value


def check_base_name(value: str, field: str) -> str:
    """A name that objects are derived from: label syntax starting with a letter, any length up to
    253 (longer derived names are shortened), so every derived name is valid for every kind."""
    if len(value) > SUBDOMAIN_MAX or not _DNS1035.match(value):
        raise ValueError(f"{field}: {value!r} cannot name Kubernetes objects: {_FIX}, "
                         f"starting with a letter, at most {SUBDOMAIN_MAX} characters "
                         f"(names over {LABEL_MAX} are shortened)")
    return value


def name_hash(text: str) -> str:
    """The short, deterministic hash that names carry when they must stay unique or be shortened."""
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def shorten(name: str, limit: int = LABEL_MAX) -> str:
    """`name` if it fits in `limit`, else a prefix + '-' + 8 hex chars of sha256(name).

    The result is still a valid label when `name` is one (the prefix never ends in '-').
    """
    if limit < HASH_CHARS + 2:
        raise ValueError(f"limit must be at least {HASH_CHARS + 2} to fit a prefix and the hash, got {limit}")
    if len(name) <= limit:
        return name
    digest = name_hash(name)
    prefix = name[: limit - HASH_CHARS - 1].rstrip("-.")
    return f"{prefix}-{digest}" if prefix else digest


def statefulset_name(name: str) -> str:
    return shorten(name, STATEFULSET_NAME_MAX)


def object_name(name: str) -> str:
    """Name of a Service, PodDisruptionBudget, NetworkPolicy, and the instance label value."""
    return shorten(name, LABEL_MAX)


def pod_name(statefulset: str, ordinal: int) -> str:
    if ordinal < 0:
        raise ValueError(f"ordinal must be >= 0, got {ordinal}")
    return f"{statefulset}-{ordinal}"


def pod_fqdn(statefulset: str, service: str, namespace: str, ordinal: int,
             cluster_domain: str = CLUSTER_DOMAIN) -> str:
    """The stable DNS name a headless Service gives a StatefulSet pod."""
    return f"{pod_name(statefulset, ordinal)}.{service}.{namespace}.svc.{cluster_domain}"
