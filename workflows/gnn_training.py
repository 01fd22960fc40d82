"""The main job: train GraphSAGE on a graph served by an ephemeral graph-engine fleet.

    pyflyte run workflows/gnn_training.py gnn_training                     # synthetic graph, defaults
    pyflyte run workflows/gnn_training.py gnn_training --dataset cora \\
        --data_dir /path/to/planetoid --epochs 30

prepare (load + convert into the graph store) -> provision (DataServiceTask, one server per
partition) -> train (`trainers` data-parallel ranks) -> evaluate on the test nodes -> with
`predict=True`, predict every node (Parquet: node_id, embedding, predicted) -> release
(DataServiceTeardownTask) -> finish.

Release runs whether training succeeded or failed: `train` and `evaluate` hand a failure on as
`TrainOutcome.error` instead of failing their node, the fleet is released, and `finish` fails the
run with that error. A node that fails outright (a pod killed, provisioning failed) triggers the
`on_failure` handler, which releases every fleet of this execution (none is fine); whatever escapes
both expires at its ttl_seconds (`graphfleet gc`).

Configuration (environment, read when this module is imported, i.e. at `pyflyte run`/register):
- `GRAPHFLEET_GRAPH_STORE`: where converted graphs go, a local dir or s3://bucket/prefix; default
  the execution's raw output prefix (a temp dir locally, the blob store on a cluster).
- `GRAPHFLEET_TRAINER`: `local` (default) trains in the task's own process (with `trainers=N`, N-1
  more rank processes beside it, all on this machine); `pytorchjob` makes the train task a Kubeflow
  PyTorchJob on the GPU pool: a master and `trainers - 1` workers (shaped per run by `train_ranks`),
  each with one GPU, the pool's toleration, the Kueue queue `GRAPHFLEET_TRAINING_QUEUE` and the
  label that lets it reach the data service.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flytekit import Deck, PodTemplate, Resources, current_context, dynamic, task, workflow
from flytekit.core.base_task import IgnoreOutputs
from flytekit.types.error import FlyteError
from flytekit.types.file import FlyteFile

from flyte_agent import DataServiceReleaseAllTask, DataServiceTask, DataServiceTeardownTask, deck
from graph_engine import health
from infra.contract import CLIENT_LABEL, ENDPOINTS_ENV
from workflows import graph_client
from workflows import train as trainer
from workflows.ranks import SINGLE
from workflows.report import TrainingReport

if TYPE_CHECKING:
    from workflows.inference import Inference

log = logging.getLogger("workflows.gnn_training")

GRAPH_STORE_ENV = "GRAPHFLEET_GRAPH_STORE"
TRAINER_ENV = "GRAPHFLEET_TRAINER"
QUEUE_ENV = "GRAPHFLEET_TRAINING_QUEUE"
TRAINERS = ("local", "pytorchjob")
# dataset= for a graph brought as Parquet tables: data_dir holds nodes/ and edges/ (graph_engine/tables.py),
# the split comes from the node table's `split` column.
TABLES = "parquet"
DEFAULT_EPOCHS = trainer.TrainConfig.epochs


@dataclass
class TrainOutcome:
    """What train/evaluate pass on: the report so far, the model, or why it failed."""

    report: TrainingReport = field(default_factory=TrainingReport)
    checkpoint: FlyteFile | None = None
    curves: FlyteFile | None = None  # loss and validation accuracy per epoch, as a PNG
    error: str = ""


def check_inputs(dataset: str, data_dir: str, partitions: int, epochs: int, trainers: int = 1) -> None:
    """Every input problem at once, before anything is loaded or created."""
    from graph_engine.datasets import DATASETS, PLANETOID

    problems = []
    if dataset not in (*DATASETS, TABLES):
        problems.append(f"dataset: unknown {dataset!r}; choose one of {', '.join((*DATASETS, TABLES))}")
    elif dataset in PLANETOID and not data_dir:
        problems.append(f"data_dir: dataset {dataset!r} needs the folder holding its ind.{dataset}.* files")
    elif dataset == TABLES and not data_dir:
        problems.append(f"data_dir: dataset {TABLES!r} needs the folder (local or s3://) holding the node "
                        "and edge tables in nodes/ and edges/")
    if partitions < 1:
        problems.append(f"partitions: must be >= 1 (one graph-engine server each), got {partitions}")
    if epochs < 1:
        problems.append(f"epochs: must be >= 1, got {epochs}")
    if trainers < 1:
        problems.append(f"trainers: must be >= 1 (data-parallel ranks), got {trainers}")
    if problems:
        raise ValueError("; ".join(problems))


def graph_store() -> str:
    return os.environ.get(GRAPH_STORE_ENV) or f"{current_context().raw_output_prefix.rstrip('/')}/graphs"


@task
def prepare(dataset: str, data_dir: str, partitions: int, epochs: int, trainers: int) -> str:
    """Load the dataset and convert it into the graph store in `partitions` partitions; its URI."""
    from graph_engine import datasets
    from graph_engine.convert import convert, convert_tables

    check_inputs(dataset, data_dir, partitions, epochs, trainers)
    # One folder per run: servers of another run may still be reading an older conversion.
    target = f"{graph_store().rstrip('/')}/{{}}-p{partitions}-{uuid.uuid4().hex[:8]}"
    if dataset == TABLES:
        tables = data_dir.rstrip("/")
        return convert_tables(f"{tables}/nodes", f"{tables}/edges", target.format(TABLES), partitions,
                              name=TABLES)
    graph = datasets.load(dataset, data_dir or None)
    return convert(graph, target.format(graph.name), partitions)


def guarded(step: str, body: Callable[[], TrainOutcome]) -> TrainOutcome:
    """Run `body`; a failure becomes the outcome's error, so the fleet is still released."""
    try:
        return body()
    except Exception as err:
        log.error("%s failed:\n%s", step, traceback.format_exc())
        return TrainOutcome(error=f"{step}: {type(err).__name__}: {err}")


def graph_client_pod(labels: dict[str, str] | None = None,
                     tolerations: list[Any] | None = None) -> PodTemplate:
    """The pod of every task that talks to a graph fleet: the graph-client label (the fleet's
    NetworkPolicy admits only labelled pods, from the stack's client namespaces) and a security
    context the restricted Pod Security Standard admits (infra/pod_security.py; a writable root,
    since flytekit and torch write to /tmp). Runs as the graph-engine image's user: that image
    carries the locked environment, training included."""
    from kubernetes.client import (
        V1Capabilities,
        V1Container,
        V1PodSecurityContext,
        V1PodSpec,
        V1SeccompProfile,
        V1SecurityContext,
    )

    from infra.image_contract import GRAPH_ENGINE_UID
    from infra.pod_security import container_security_context, pod_security_context

    pod, container = pod_security_context(GRAPH_ENGINE_UID), container_security_context()
    seccomp = V1SeccompProfile(type=pod["seccompProfile"]["type"])
    spec = V1PodSpec(
        containers=[V1Container(name="primary", security_context=V1SecurityContext(
            allow_privilege_escalation=container["allowPrivilegeEscalation"],
            capabilities=V1Capabilities(drop=container["capabilities"]["drop"]),
            run_as_non_root=container["runAsNonRoot"], seccomp_profile=seccomp))],
        security_context=V1PodSecurityContext(
            run_as_non_root=pod["runAsNonRoot"], run_as_user=pod["runAsUser"], run_as_group=pod["runAsGroup"],
            fs_group=pod["fsGroup"], seccomp_profile=seccomp),
        tolerations=tolerations)
    return PodTemplate(pod_spec=spec, labels={CLIENT_LABEL: "true", **(labels or {})},
                       primary_container_name="primary")


def _trainer_task(fn: Callable[..., Any]) -> Any:
    """`task` for the train step: in-process locally, a PyTorchJob on the GPU pool on a cluster."""
    trainer = os.environ.get(TRAINER_ENV, "local")
    if trainer not in TRAINERS:
        raise ValueError(f"{TRAINER_ENV}={trainer!r}: choose one of {', '.join(TRAINERS)}")
    if trainer == "local":
        return task(pod_template=graph_client_pod())(fn)
    from kubernetes.client import V1Toleration

    from infra.config import Taint
    from infra.gpu_pool import QUEUE_LABEL

    labels = {}
    queue = os.environ.get(QUEUE_ENV, "")
    if queue:
        labels[QUEUE_LABEL] = queue
    pod = graph_client_pod(labels, tolerations=[V1Toleration(**Taint().toleration())])
    gpu = Resources(gpu="1")
    return task(task_config=pytorch_job(1), pod_template=pod, requests=gpu, limits=gpu)(fn)


def pytorch_job(trainers: int) -> Any:
    """The PyTorchJob of `trainers` ranks: its master is rank 0, the N-1 workers the others; every
    replica gets the train task's pod template (labels, toleration) and GPU."""
    from flytekitplugins.kfpytorch import Master, PyTorch, Worker

    return PyTorch(master=Master(), worker=Worker(replicas=trainers - 1))


@_trainer_task
def train(graph_uri: str, endpoints: str, epochs: int, seed: int, trainers: int) -> TrainOutcome:
    """Fit GraphSAGE through the fleet in `trainers` data-parallel ranks; the model with the best
    validation accuracy is kept. In a PyTorchJob every replica runs this; only rank 0's outputs count."""
    rank = SINGLE

    def body() -> TrainOutcome:
        nonlocal rank
        os.environ[ENDPOINTS_ENV] = endpoints  # the trainer reads its endpoints from here only
        config = trainer.TrainConfig(epochs=epochs, seed=seed)
        used = graph_client.endpoints_from_env()
        print(f"graph data service: {', '.join(used)}; {trainers} trainer(s)")
        rank, fitted = trainer.fit_ranks(graph_uri, config, used, trainers)
        if not rank.main:
            return TrainOutcome()
        out = Path(tempfile.mkdtemp(prefix="gnn-train-"))
        trainer.write_outputs(fitted.report, out)
        checkpoint = trainer.save(fitted, out / "model.pt")
        return TrainOutcome(report=fitted.report, checkpoint=FlyteFile(str(checkpoint)),
                            curves=FlyteFile(str(out / trainer.CURVES_FILE)))

    outcome = guarded("train", body)
    if not rank.main:
        if outcome.error:  # this replica fails visibly; rank 0 fails the run at its next collective
            raise RuntimeError(outcome.error)
        # flytekit's entrypoint uploads no outputs for IgnoreOutputs: the master's are the task's.
        raise IgnoreOutputs(f"trainer rank {rank.rank} of {rank.world}: rank 0 reports")
    return outcome


@dynamic
def train_ranks(graph_uri: str, endpoints: str, epochs: int, seed: int, trainers: int) -> TrainOutcome:
    """`train`, as a PyTorchJob of `trainers` replicas when the trainer is one (the replica count is
    an input of the run, so the job is shaped here, when it is known)."""
    if os.environ.get(TRAINER_ENV, "local") == "pytorchjob":
        return train(graph_uri=graph_uri, endpoints=endpoints, epochs=epochs, seed=seed,
                     trainers=trainers).with_overrides(task_config=pytorch_job(trainers))
    return train(graph_uri=graph_uri, endpoints=endpoints, epochs=epochs, seed=seed, trainers=trainers)


@task(enable_deck=True, pod_template=graph_client_pod())
def evaluate(graph_uri: str, endpoints: str, trained: TrainOutcome) -> TrainOutcome:
    """Test accuracy of the kept model, through the same fleet (shown in its "data service" Deck)."""
    if trained.error:
        return trained

    def body() -> TrainOutcome:
        assert trained.checkpoint is not None
        os.environ[ENDPOINTS_ENV] = endpoints
        used = graph_client.endpoints_from_env()
        fitted = trainer.load(Path(trained.checkpoint.download()))  # holds the graph's manifest
        ready = health.not_ready(used, timeout=2.0)
        Deck("data service", deck.fleet_html(used, fitted.info.partitions, ready))
        report = trainer.evaluate(fitted, graph_client.open_service(used), used)
        return TrainOutcome(report=report, checkpoint=trained.checkpoint, curves=trained.curves)

    return guarded("evaluate", body)


def predictions_uri() -> str:
    """A fresh folder under the execution's raw output prefix (the blob store on a cluster)."""
    return f"{current_context().raw_output_prefix.rstrip('/')}/predictions-{uuid.uuid4().hex[:8]}"


def predict_every_node(checkpoint: FlyteFile, graph_uri: str, endpoints: str, trainers: int) -> Inference:
    """Every node's embedding and predicted class through the fleet at `endpoints` (its environment
    value), in `trainers` ranks, into a fresh folder of the execution's raw outputs."""
    from workflows import inference

    os.environ[ENDPOINTS_ENV] = endpoints
    done = inference.infer(Path(checkpoint.download()), graph_uri, predictions_uri(),
                           graph_client.endpoints_from_env(), trainers)
    print(f"predictions: {done.nodes} nodes at {done.nodes_per_second:.0f} nodes/s -> {done.uri}")
    return done


@task(pod_template=graph_client_pod())
def predict_nodes(graph_uri: str, endpoints: str, tested: TrainOutcome, predict: bool,
                  trainers: int) -> TrainOutcome:
    """With `predict`: every node's embedding and predicted class through the same fleet, in `trainers`
    parallel ranks, as a Parquet dataset the report names (workflows/inference.py)."""
    if tested.error or not predict:
        return tested

    def body() -> TrainOutcome:
        assert tested.checkpoint is not None
        done = predict_every_node(tested.checkpoint, graph_uri, endpoints, trainers)
        report = TrainingReport(**{**asdict(tested.report), "predictions": done.uri})
        return TrainOutcome(report=report, checkpoint=tested.checkpoint, curves=tested.curves)

    return guarded("predict", body)


@task(enable_deck=True)
def finish(outcome: TrainOutcome, released: str) -> TrainingReport:
    """The run's result (its "training" Deck: curves and report); fails the run (after the fleet was
    released) if training failed."""
    if outcome.error:
        raise RuntimeError(f"{outcome.error} (data service: {released})")
    print(outcome.report.summary())
    curves = Path(outcome.curves.download()) if outcome.curves is not None else None
    if curves is not None:
        print(f"training curves: {curves}")
    Deck("training", deck.training_html(dataclasses.asdict(outcome.report), curves))
    return outcome.report


graph_service = DataServiceTask(name="gnn_training.graph_service")
release = DataServiceTeardownTask(name="gnn_training.release_graph_service")
release_all = DataServiceReleaseAllTask(name="gnn_training.release_all_graph_services")


@workflow
def release_on_failure(dataset: str = "synthetic", data_dir: str = "", partitions: int = 2,
                       epochs: int = DEFAULT_EPOCHS, seed: int = 0, trainers: int = 1,
                       predict: bool = False, err: FlyteError | None = None) -> str:
    """The on_failure handler (it must take the workflow's inputs): the failed node's outputs never
    reach it, so it releases every fleet of this execution rather than one by name."""
    return release_all()


@workflow(on_failure=release_on_failure)
def gnn_training(dataset: str = "synthetic", data_dir: str = "", partitions: int = 2,
                 epochs: int = DEFAULT_EPOCHS, seed: int = 0, trainers: int = 1,
                 predict: bool = False) -> TrainingReport:
    graph_uri = prepare(dataset=dataset, data_dir=data_dir, partitions=partitions, epochs=epochs,
                        trainers=trainers)
    fleet = graph_service(graph_uri=graph_uri, replicas=partitions)
    trained = train_ranks(graph_uri=graph_uri, endpoints=fleet.endpoints_env, epochs=epochs, seed=seed,
                          trainers=trainers)
    tested = evaluate(graph_uri=graph_uri, endpoints=fleet.endpoints_env, trained=trained)
    predicted = predict_nodes(graph_uri=graph_uri, endpoints=fleet.endpoints_env, tested=tested,
                              predict=predict, trainers=trainers)
    released = release(service=fleet.service)
    predicted >> released
    return finish(outcome=predicted, released=released)
