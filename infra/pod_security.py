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


def secret_file(volume: str, secret: str, mount_path: str, items: list[dict[str, str]] | None = None
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) of a Secret mounted read-only as files. Mode 0440 with the pod's fsGroup:
    the kubelet gives a Secret volume's files the fsGroup as their group, so the container's gid reads
    them and other uids do not (docs/external-contracts.md, Kubernetes: Secret files and fsGroup)."""
    source: dict[str, Any] = {"secretName": secret, "defaultMode": 0o440}
    if items is not None:
        source["items"] = items
    return ({"name": volume, "secret": source}, {"name": volume, "mountPath": mount_path, "readOnly": True})
