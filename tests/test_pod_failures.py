"""flyte_agent/pod_failures.py: a fleet that cannot start is told from its pods' status (issue 8 item 10),
over Kubernetes' own V1Pod model."""

from __future__ import annotations

import datetime as dt

import pytest
from kubernetes.client import V1ContainerStatus, V1ObjectMeta, V1Pod, V1PodCondition, V1PodStatus

from flyte_agent.pod_failures import CRASH_LOOP_RESTARTS, UNSCHEDULABLE_SECONDS, fleet_failure, pod_failure
from flyte_agent.settings import Settings, SettingsError
from tests.pod_models import container

NOW = dt.datetime(2026, 11, 30, 1, 0, tzinfo=dt.UTC)


def pod(*containers: V1ContainerStatus, unschedulable_for: float | None = None,
        init: list[V1ContainerStatus] | None = None, now: dt.datetime = NOW) -> V1Pod:
    conditions = None
    if unschedulable_for is not None:
        conditions = [V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable",
                                     message="0/3 nodes are available: 3 Insufficient memory.",
                                     last_transition_time=now - dt.timedelta(seconds=unschedulable_for))]
    return V1Pod(metadata=V1ObjectMeta(name="gf-x-0", namespace="graphfleet"),
                 status=V1PodStatus(container_statuses=list(containers) or None, conditions=conditions,
                                    init_container_statuses=init))


def failure(p: V1Pod, grace: float = UNSCHEDULABLE_SECONDS,
            restarts: int = CRASH_LOOP_RESTARTS) -> str | None:
    return pod_failure(p, NOW.timestamp(), grace, restarts)


def test_image_and_config_errors_fail_at_once_with_the_kubelets_reason_and_message() -> None:
    pulled = failure(pod(container("ImagePullBackOff", 'Back-off pulling image "registry/x:bad"')))
    assert pulled == 'container graph-engine ImagePullBackOff: Back-off pulling image "registry/x:bad"'
    assert failure(pod(container("ErrImagePull"))) == "container graph-engine ErrImagePull"
    assert failure(pod(container("InvalidImageName"))) == "container graph-engine InvalidImageName"
    secret = failure(pod(container("CreateContainerConfigError", 'secret "creds" not found')))
    assert secret == 'container graph-engine CreateContainerConfigError: secret "creds" not found'
    # An init container that cannot pull keeps the pod from ever starting, too.
    assert failure(pod(init=[container("ImagePullBackOff", name="link-plugins")])) == (
        "container link-plugins ImagePullBackOff")


def test_a_crash_loop_fails_after_repeated_restarts_naming_the_last_exit() -> None:
    assert failure(pod(container("CrashLoopBackOff", restarts=1, last=("Error", 1)))) is None
    assert failure(pod(container("CrashLoopBackOff", restarts=2, last=("OOMKilled", 137)))) == (
        "container graph-engine CrashLoopBackOff after 2 restarts, last exit: OOMKilled")


def test_an_unschedulable_pod_fails_after_the_grace_with_the_schedulers_message() -> None:
    assert failure(pod(unschedulable_for=60)) is None, "an autoscaler may still add a node"
    assert failure(pod(unschedulable_for=301)) == (
        "Unschedulable for 301s: 0/3 nodes are available: 3 Insufficient memory.")


def test_healthy_and_loading_pods_are_no_failure_and_the_fleet_names_the_pod() -> None:
    assert failure(pod(container())) is None
    assert failure(V1Pod(metadata=V1ObjectMeta(name="gf-x-1"))) is None
    assert failure(pod(container("ContainerCreating"))) is None
    pods = {"gf-x-1": pod(container()), "gf-x-0": pod(container("ImagePullBackOff"))}
    assert fleet_failure(pods, NOW.timestamp(), 300, 2) == (
        "pod graphfleet/gf-x-0: container graph-engine ImagePullBackOff")
    assert fleet_failure({"gf-x-1": pod(container())}, NOW.timestamp(), 300, 2) is None


def test_the_thresholds_are_the_connectors_settings_and_change_the_decision() -> None:
    defaults = Settings()
    assert (defaults.crash_loop_restarts, defaults.unschedulable_seconds) == (2, 300)
    patient = Settings.from_env({"GRAPHFLEET_CRASH_LOOP_RESTARTS": "5",
                                 "GRAPHFLEET_UNSCHEDULABLE_SECONDS": "900"})
    hasty = Settings.from_env({"GRAPHFLEET_CRASH_LOOP_RESTARTS": "1",
                               "GRAPHFLEET_UNSCHEDULABLE_SECONDS": "30"})

    def under(settings: Settings, p: V1Pod) -> str | None:
        return failure(p, settings.unschedulable_seconds, settings.crash_loop_restarts)

    crashing = pod(container("CrashLoopBackOff", restarts=3, last=("Error", 1)))
    assert under(defaults, crashing) is not None and under(patient, crashing) is None
    once = pod(container("CrashLoopBackOff", restarts=1, last=("Error", 1)))
    assert under(defaults, once) is None and under(hasty, once) is not None
    waiting = pod(unschedulable_for=600)
    assert under(defaults, waiting) is not None and under(patient, waiting) is None
    brief = pod(unschedulable_for=60)
    assert under(defaults, brief) is None and under(hasty, brief) == (
        "Unschedulable for 60s: 0/3 nodes are available: 3 Insufficient memory.")
    for variable, bad in (("GRAPHFLEET_CRASH_LOOP_RESTARTS", "0"), ("GRAPHFLEET_UNSCHEDULABLE_SECONDS", "-1"),
                          ("GRAPHFLEET_CRASH_LOOP_RESTARTS", "two")):
        with pytest.raises(SettingsError, match=variable):
            Settings.from_env({variable: bad})
