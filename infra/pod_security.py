"""The security contexts every graphfleet pod runs with: Pod Security `restricted`, non-root, no
privilege escalation, no capabilities, a read-only root filesystem (writes go to an emptyDir)."""

from __future__ import annotations

from typing import Any


def pod_security_context(uid: int) -> dict[str, Any]:
    """Pod level: a fixed non-root uid and group, which also own the pod's volumes."""
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
