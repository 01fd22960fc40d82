"""Batch inference with a trained checkpoint against any converted graph, through a graph-engine fleet.

    pyflyte run workflows/gnn_inference.py gnn_inference --graph_uri /path/to/graph \\
        --model runs/model.pt --trainers 2

provision (its own fleet, one server per partition; or, with `GRAPHFLEET_INFERENCE_REUSE=<name>` set
when the workflow is registered, the datacenter's shared service of that name) -> predict every node in
`trainers` parallel ranks -> release (a shared service is left alone) -> the Parquet dataset's URI
(`node_id`, `embedding`, `predicted`; workflows/inference.py). Release runs whether prediction
succeeded or not; `on_failure` releases whatever a failed node left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from flytekit import task, workflow
from flytekit.types.error import FlyteError
from flytekit.types.file import FlyteFile

from flyte_agent import DataServiceReleaseAllTask, DataServiceTask, DataServiceTeardownTask
from workflows.gnn_training import graph_client_pod, predict_every_node

REUSE_ENV = "GRAPHFLEET_INFERENCE_REUSE"
REUSE = os.environ.get(REUSE_ENV, "")


@dataclass
class InferenceReport:
    predictions: str = ""   # the Parquet dataset (local path or s3:// URI)
    nodes: int = 0
    nodes_per_second: float = 0.0
    error: str = ""


@task(pod_template=graph_client_pod())  # it opens the fleet: the NetworkPolicy admits labelled pods only
def predict_all(graph_uri: str, endpoints: str, model: FlyteFile, trainers: int) -> InferenceReport:
    try:
        done = predict_every_node(model, graph_uri, endpoints, trainers)
    except Exception as err:  # handed on so the fleet is released first
        return InferenceReport(error=f"predict: {type(err).__name__}: {err}")
    return InferenceReport(predictions=done.uri, nodes=done.nodes, nodes_per_second=done.nodes_per_second)


@task
def finish_inference(report: InferenceReport, released: str) -> InferenceReport:
    if report.error:
        raise RuntimeError(f"{report.error} (data service: {released})")
    return report


graph_service = DataServiceTask(name="gnn_inference.graph_service",
                                config={"reuse": REUSE} if REUSE else None)
release = DataServiceTeardownTask(name="gnn_inference.release_graph_service")
release_all = DataServiceReleaseAllTask(name="gnn_inference.release_all_graph_services")


@workflow
def release_on_failure(graph_uri: str, model: FlyteFile, partitions: int = 0, trainers: int = 1,
                       err: FlyteError | None = None) -> str:
    return release_all()


@workflow(on_failure=release_on_failure)
def gnn_inference(graph_uri: str, model: FlyteFile, partitions: int = 0,
                  trainers: int = 1) -> InferenceReport:
    """`partitions`: servers of the fleet (0: one per partition of the graph)."""
    # A shared service is named by the config; a graph_uri input would replace it by a new fleet.
    fleet = graph_service(graph_uri="" if REUSE else graph_uri, replicas=partitions)
    predicted = predict_all(graph_uri=graph_uri, endpoints=fleet.endpoints_env, model=model,
                            trainers=trainers)
    released = release(service=fleet.service)
    predicted >> released
    return finish_inference(report=predicted, released=released)
