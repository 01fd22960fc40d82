"""The object-store contract against a real S3 endpoint (moto's server): the environment and mounted
credentials file the manifests give a pod are enough for fsspec/s3fs to read a graph, and without the
file nothing is read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3

from infra.connector_config import ObjectStore
from infra.object_store import CREDENTIALS_DIR, CREDENTIALS_FILE, PROFILE, env, volume_mounts, volumes
from tests.s3_server import REGION, moto_s3

READ_META = "from graph_engine.store import partition_count; print(partition_count('s3://graphs/g'))"


def _pod_env(store: ObjectStore, mounted: Path) -> dict[str, str]:
    """The container's environment, with the Secret volume's mount path moved to where the test put it."""
    values = {e["name"]: e["value"] for e in env(store)}
    if "AWS_SHARED_CREDENTIALS_FILE" in values:
        values["AWS_SHARED_CREDENTIALS_FILE"] = values["AWS_SHARED_CREDENTIALS_FILE"].replace(
            CREDENTIALS_DIR, str(mounted))
    # Nothing else: no AWS_* keys from the test process.
    return {"PATH": os.environ["PATH"], "HOME": str(mounted), "AWS_CONFIG_FILE": str(mounted / "none"),
            "AWS_EC2_METADATA_DISABLED": "true", **values}


def _read(store: ObjectStore, mounted: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", READ_META], env=_pod_env(store, mounted),
                          capture_output=True, text=True, timeout=120)


def test_a_pod_reads_the_graph_with_the_mounted_credentials_file(tmp_path: Path) -> None:
    with moto_s3(buckets=["graphs"]) as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        meta = json.dumps({"partitions": {"0": {}, "1": {}}})
        client.put_object(Bucket="graphs", Key="g/meta.json", Body=meta)
        store = ObjectStore.model_validate({"endpoint": endpoint,
                                            "credentials": {"name": "graphfleet-object-store",
                                                            "key": "credentials"}})
        # What the operator puts in the Secret; the kubelet mounts the key as CREDENTIALS_FILE.
        (tmp_path / CREDENTIALS_FILE).write_text(
            f"[{PROFILE}]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
            f"region = {REGION}\n")
        read = _read(store, tmp_path)
        assert read.returncode == 0, read.stderr
        assert read.stdout.strip() == "2"
        assert [m["mountPath"] for m in volume_mounts(store)] == [CREDENTIALS_DIR]
        assert volumes(store)[0]["secret"]["items"] == [{"key": "credentials", "path": CREDENTIALS_FILE}]

        # The endpoint alone (what ltx1's graph engines had before) is not enough to read.
        bare = _read(ObjectStore.model_validate({"endpoint": endpoint}), tmp_path)
        assert bare.returncode != 0
        assert "credentials" in bare.stderr.lower()
