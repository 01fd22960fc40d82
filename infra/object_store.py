"""How the connector and every graph-engine server reach the graphs in a datacenter's object store.

One `ObjectStore` (stack key `graphfleet:objectStore`) gives both sides the same endpoint and the
same credentials, so a graph the connector can read (it reads `meta.json` itself) is a graph the
servers can load. Credentials are never a value in a manifest or in Pulumi state: either workload
identity (service-account annotations such as IRSA's `eks.amazonaws.com/role-arn`) or a Secret the
operator creates, mounted read-only as an AWS shared-credentials file.

Everything is scoped to fsspec's S3 settings (`FSSPEC_S3_*`: DeepGNN's servers and
`graph_engine.store` read through fsspec/s3fs), not the process-wide `AWS_*` ones: the connector's
Pulumi CLI also talks to S3 (its state backend) and must keep its own endpoint and credentials.
"""

from __future__ import annotations

from typing import Any

from infra.connector_config import ObjectStore, SecretKeyRef
from infra.pod_security import secret_file

CREDENTIALS_VOLUME = "object-store-credentials"
CREDENTIALS_DIR = "/var/run/secrets/graphfleet/object-store"
CREDENTIALS_FILE = "credentials"
# The profile s3fs reads from the mounted file (`FSSPEC_S3_PROFILE`); the AWS SDK's default chain
# (the Pulumi CLI's) reads `default`, so the graph credentials never become the state backend's.
PROFILE = "graphfleet-graphs"


def env(store: ObjectStore) -> list[dict[str, Any]]:
    """Plain settings only: the endpoint and where the credentials file is mounted."""
    values = {"FSSPEC_S3_ENDPOINT_URL": store.endpoint}
    if store.credentials is not None:
        values["AWS_SHARED_CREDENTIALS_FILE"] = f"{CREDENTIALS_DIR}/{CREDENTIALS_FILE}"
        values["FSSPEC_S3_PROFILE"] = PROFILE
    return [{"name": name, "value": value} for name, value in values.items() if value is not None]


def volumes(store: ObjectStore) -> list[dict[str, Any]]:
    return [_secret_file(store.credentials)[0]] if store.credentials is not None else []


def volume_mounts(store: ObjectStore) -> list[dict[str, Any]]:
    return [_secret_file(store.credentials)[1]] if store.credentials is not None else []


def _secret_file(ref: SecretKeyRef) -> tuple[dict[str, Any], dict[str, Any]]:
    return secret_file(CREDENTIALS_VOLUME, ref.name, CREDENTIALS_DIR,
                       [{"key": ref.key, "path": CREDENTIALS_FILE}])
