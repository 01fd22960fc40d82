"""A real `pulumi up`/`destroy` of one fleet, where the pulumi CLI and a kubeconfig exist."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.real_cluster import KUBECONFIG, needs_pulumi_and_cluster

pytestmark = needs_pulumi_and_cluster


def test_real_engine_provisions_and_destroys_a_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from flyte_agent.provisioner import Phase, Provision
    from flyte_agent.pulumi_provisioner import PulumiProvisioner
    from flyte_agent.settings import Settings
    from infra.spec import DataServiceSpec

    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", os.environ.get("PULUMI_CONFIG_PASSPHRASE", "integration"))
    uri = os.environ.get("GRAPHFLEET_TEST_GRAPH_URI", "s3://graphfleet-test/cora")
    settings = Settings(backend="pulumi", backend_url=f"file://{tmp_path}", kubeconfig=str(KUBECONFIG),
                        namespace=os.environ.get("GRAPHFLEET_NAMESPACE", "default"), gc_interval_seconds=0)
    provisioner = PulumiProvisioner(settings)
    p = Provision(name=f"it-{int(time.time())}", spec=DataServiceSpec(graph_uri=uri, partitions=1),
                  owner="integration", execution="integration", created_at=time.time())
    try:
        provisioner.create(p)
        deadline = time.monotonic() + 1800
        status = provisioner.status(p)
        while status.phase not in (Phase.READY, Phase.FAILED) and time.monotonic() < deadline:
            time.sleep(5)
            status = provisioner.status(p)
        assert status.phase is Phase.READY, status.message
    finally:
        provisioner.delete(p.name, p.owner)
        provisioner.close()
