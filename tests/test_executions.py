"""What gc asks of every holder of a fleet: does its execution still run, or has it ended?

Locally an execution is a process; on a cluster it is the FlyteWorkflow object that FlyteAdmin creates
and deletes (on abort) and propeller drives (docs/external-contracts.md, section "Flyte"). The
cluster probe is held against a real kube-apiserver with the FlyteWorkflow CRD as propeller makes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from flyte_agent import connector, task_request
from flyte_agent.executions import (
    FLYTEWORKFLOW_GROUP,
    FLYTEWORKFLOW_VERSION,
    FLYTEWORKFLOWS,
    Execution,
    FlyteExecutions,
    LocalExecutions,
    check_watchable,
    flyteworkflow_state,
    holders,
    local_run,
)
from tests.control_plane import CONTROL_PLANE_TOOLS, ControlPlane, needs_tools
from tests.test_pulumi_provisioner import backend  # noqa: F401

RUNNING, ENDED, SUCCEEDED, UNKNOWN = (Execution.RUNNING, Execution.ENDED, Execution.SUCCEEDED,
                                      Execution.UNKNOWN)


def test_a_local_run_is_its_process_identified_by_pid_and_start_time() -> None:
    probe = LocalExecutions()
    assert probe.state(f"local/local/{task_request.local_run()}") is RUNNING  # this process: alive
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    name = local_run(child.pid)
    child.wait(timeout=60)
    assert probe.state(f"local/local/{name}") is ENDED  # exited (and reaped): a killed run is one too
    # The same pid with another start time is another process (pid reuse): this run has ended.
    pid, start, tail = task_request.local_run().split("-")
    assert probe.state(f"local/local/{pid}-t{int(start[1:]) + 1}-{tail}") is ENDED
    # An execution of a served connector has no process to look at: it cannot be told.
    assert probe.state("proj/dev/f3a9c1") is UNKNOWN and probe.state("local/local/other") is UNKNOWN
    assert task_request.local_run().startswith(f"pid{os.getpid()}-t")


def test_a_flyteworkflow_says_running_until_it_ends_and_gone_or_deleting_is_ended() -> None:
    def wf(phase: int | None = None, deleting: bool = False) -> dict[str, Any]:
        meta = {"name": "f3a9c1", **({"deletionTimestamp": "2026-11-30T04:00:00Z"} if deleting else {})}
        return {"metadata": meta, **({"status": {"phase": phase}} if phase is not None else {})}

    # propeller's WorkflowPhase: Ready 0, Running 1, Succeeding 2, Success 3, Failing 4, Failed 5,
    # Aborted 6, HandlingFailureNode 7; no status yet: just created by FlyteAdmin.
    assert [flyteworkflow_state(wf(p)) for p in (None, 0, 1, 2, 4, 7)] == [RUNNING] * 6
    assert flyteworkflow_state(wf(3)) is SUCCEEDED
    assert flyteworkflow_state(wf(5)) is ENDED and flyteworkflow_state(wf(6)) is ENDED
    assert flyteworkflow_state(wf(1, deleting=True)) is ENDED  # FlyteAdmin's abort deletes it
    assert flyteworkflow_state(None) is ENDED


def test_a_fleet_is_held_by_its_leases_else_its_own_workflow_execution() -> None:
    assert holders(["p/d/a", "p/d/b"], "p/d/share:s/shared") == ["p/d/a", "p/d/b"]
    assert holders([], "p/d/run-x/n0") == ["p/d/run-x"]
    assert holders([], "exec-gf-own-2") == []  # no workflow execution: nobody to ask


def flyteworkflow_crd() -> dict[str, Any]:
    """The CRD as propeller creates it (flytepropeller v1.16.4 pkg/apis/flyteworkflow/crd.go)."""
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{FLYTEWORKFLOWS}.{FLYTEWORKFLOW_GROUP}"},
            "spec": {"group": FLYTEWORKFLOW_GROUP, "scope": "Namespaced",
                     "names": {"kind": "FlyteWorkflow", "plural": FLYTEWORKFLOWS, "singular": "flyteworkflow",
                               "shortNames": ["fly"]},
                     "versions": [{"name": FLYTEWORKFLOW_VERSION, "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


@pytest.fixture
def flyte_cluster(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The real control plane with the FlyteWorkflow CRD and Flyte's proj-dev namespace."""
    cp = control_plane
    r = cp.apply(flyteworkflow_crd())
    assert r.status_code in (200, 201), r.text
    name = f"{FLYTEWORKFLOWS}.{FLYTEWORKFLOW_GROUP}"
    cp.wait_for("the FlyteWorkflow CRD Established", lambda: any(
        c["type"] == "Established" and c["status"] == "True"
        for c in cp.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        .get("status", {}).get("conditions", [])))
    r = cp.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": "proj-dev"}})
    assert r.status_code in (201, 409), r.text
    yield cp


def _workflow(cp: ControlPlane, name: str, phase: int, finalizer: bool = False) -> str:
    """A FlyteWorkflow as FlyteAdmin creates it and propeller updates it (status is in the object: the
    CRD has no status subresource); returns its path."""
    base = f"/apis/{FLYTEWORKFLOW_GROUP}/{FLYTEWORKFLOW_VERSION}/namespaces/proj-dev/{FLYTEWORKFLOWS}"
    meta: dict[str, Any] = {"name": name,
                            "labels": {"execution-id": name, "project": "proj", "domain": "dev"}}
    if finalizer:  # propeller's, which holds a deleted workflow while it aborts the nodes
        meta["finalizers"] = ["flyte-finalizer"]
    r = cp.request("POST", base, {"apiVersion": f"{FLYTEWORKFLOW_GROUP}/{FLYTEWORKFLOW_VERSION}",
                                  "kind": "FlyteWorkflow", "metadata": meta,
                                  "executionId": {"project": "proj", "domain": "dev", "name": name},
                                  "status": {"phase": phase}})
    assert r.status_code == 201, r.text
    return f"{base}/{name}"


@needs_tools(*CONTROL_PLANE_TOOLS)
def test_the_cluster_probe_reads_flyteworkflows_from_a_real_apiserver(flyte_cluster: ControlPlane) -> None:
    cp = flyte_cluster
    probe = FlyteExecutions(str(cp.kubeconfig), "{project}-{domain}")
    _workflow(cp, "run-running", 1)
    _workflow(cp, "run-done", 3)
    _workflow(cp, "run-failed", 5)
    aborting = _workflow(cp, "run-aborting", 1, finalizer=True)
    assert probe.state("proj/dev/run-running") is RUNNING
    assert probe.state("proj/dev/run-done") is SUCCEEDED
    assert probe.state("proj/dev/run-failed") is ENDED
    assert probe.state("proj/dev/never-here") is ENDED  # the apiserver's 404 names the object

    # FlyteAdmin's abort: DELETE with background propagation; the finalizer keeps it, being deleted.
    r = cp.request("DELETE", aborting, {"propagationPolicy": "Background"})
    assert r.status_code in (200, 202), r.text
    assert cp.get(aborting)["metadata"]["deletionTimestamp"]
    assert probe.state("proj/dev/run-aborting") is ENDED
    r = cp.request("PATCH", aborting, {"metadata": {"finalizers": None}},
                   content_type="application/merge-patch+json")
    assert r.status_code == 200, r.text
    cp.wait_for("the aborted workflow gone", lambda: cp.request("GET", aborting).status_code == 404)
    assert probe.state("proj/dev/run-aborting") is ENDED

    # A wrong namespace mapping looks like gone, which is why CreateTask checks (next test).
    assert FlyteExecutions(str(cp.kubeconfig), "flyte-{project}").state("proj/dev/run-running") is ENDED
    # What cannot be told changes nothing: an unserved resource, a name no execution has.
    unserved = FlyteExecutions(str(cp.kubeconfig), "{project}-{domain}")
    unserved._plural = "flyteworkflowz"  # the 404 of a resource no CRD serves names no object
    assert unserved.state("proj/dev/run-running") is UNKNOWN
    assert probe.state("proj/dev/share:sweep") is UNKNOWN  # no execution's name: nothing asked
    # A local run against a cluster (no Flyte metadata) is its process, as on the local backend.
    assert probe.state(f"local/local/{task_request.local_run()}") is RUNNING
    check_watchable(probe, f"local/local/{task_request.local_run()}")


@needs_tools(*CONTROL_PLANE_TOOLS)
def test_create_refuses_an_execution_the_probe_cannot_see_naming_the_settings(
        flyte_cluster: ControlPlane) -> None:
    cp = flyte_cluster
    _workflow(cp, "run-visible", 1)
    probe = FlyteExecutions(str(cp.kubeconfig), "{project}-{domain}")
    check_watchable(probe, "proj/dev/run-visible")
    with pytest.raises(ValueError, match="no running FlyteWorkflow 'elsewhere' in namespace 'proj-dev'.*"
                                         "GRAPHFLEET_CONSUMER_NAMESPACE.*GRAPHFLEET_WATCH_EXECUTIONS=false"):
        check_watchable(probe, "proj/dev/elsewhere")
    check_watchable(LocalExecutions(), "proj/dev/elsewhere")  # a process probe has nothing to check
    check_watchable(None, "proj/dev/elsewhere")


@needs_tools(*CONTROL_PLANE_TOOLS)
def test_createtask_fails_an_execution_the_connector_cannot_see_and_creates_nothing(
        flyte_cluster: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    from flyteidl.core.execution_pb2 import TaskExecution

    from flyte_agent import DataServiceConfig, DataServiceTask
    from flyte_agent.settings import Settings
    from infra.spec import DataServiceSpec
    from tests.test_task_dsl import execution_metadata, template_of

    class Recording:  # the connector's provisioner seam: records what it is asked to create
        def __init__(self) -> None:
            self.executions = FlyteExecutions(str(flyte_cluster.kubeconfig), "{project}-{domain}")
            self.created: list[str] = []

        def create(self, provision: Any) -> None:
            self.created.append(provision.name)

    provisioner = Recording()
    monkeypatch.setattr(connector.provisioning, "_made", (Settings(backend="pulumi"), provisioner))
    monkeypatch.setattr(connector, "resolve_spec", lambda custom, *_: DataServiceSpec.from_custom(
        {**custom, "partitions": 2}))
    _workflow(flyte_cluster, "run-here", 1)
    served = connector.DataServiceConnector()
    template = template_of(DataServiceTask(name="graph", config=DataServiceConfig(graph_uri="s3://graphs/g")))
    assert not served._create(template, None, execution_metadata("run-here", "n0")).error
    meta = served._create(template, None, execution_metadata("run-elsewhere", "n0"))
    assert len(provisioner.created) == 1  # run-here's only
    refused = served._get(meta)
    assert refused.phase == TaskExecution.FAILED
    assert "no running FlyteWorkflow 'run-elsewhere' in namespace 'proj-dev'" in refused.message


@needs_tools(*CONTROL_PLANE_TOOLS)
def test_an_abort_during_training_frees_the_fleet_at_the_next_gc_not_at_its_ttl(
        flyte_cluster: ControlPlane, backend: tuple[str, Any]) -> None:  # noqa: F811
    """The whole path on a real apiserver: the data-service task has succeeded (no DeleteTask comes),
    training runs, FlyteAdmin's abort deletes the FlyteWorkflow; gc, probing it, destroys the fleet."""
    import dataclasses

    from flyte_agent.provisioner import Phase
    from flyte_agent.pulumi_provisioner import PulumiProvisioner
    from tests import fake_pulumi
    from tests.test_pulumi_provisioner import provision, settings, wait

    workflow = _workflow(flyte_cluster, "run-train", 1, finalizer=True)
    probe = FlyteExecutions(str(flyte_cluster.kubeconfig), "{project}-{domain}")
    provisioner = PulumiProvisioner(settings(backend), executions=probe)
    try:
        fleet = dataclasses.replace(provision("gf-train", replicas=1), execution="proj/dev/run-train/n0")
        provisioner.create(fleet)
        assert wait(provisioner, fleet, {Phase.READY, Phase.FAILED}).phase is Phase.READY
        assert provisioner.gc(time.time()) == []  # training runs: kept, hours before its TTL

        r = flyte_cluster.request("DELETE", workflow, {"propagationPolicy": "Background"})
        assert r.status_code in (200, 202), r.text
        assert provisioner.gc(time.time()) == ["gf-train"]  # still being aborted: already ended
        assert "gf-train" not in fake_pulumi.stacks(backend[0])
    finally:
        provisioner.close()
