"""The GraphSAGE trainer: prefetching, batches through DeepGNN, learning, and the CLI as a plain process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from deepgnn.graph_engine.snark.client import MemoryGraph

from graph_engine import datasets
from graph_engine.convert import convert
from graph_engine.health import EndpointsNotReady
from infra.contract import ENDPOINTS_ENV
from tests.test_graph_server import free_port, start
from workflows.graph_client import endpoints_from_env, open_service
from workflows.sampler import Prefetcher, sample_batch
from workflows.train import (
    GraphInfo,
    TrainConfig,
    evaluate,
    fit,
    resolve_device,
    torch_threads,
    usable_cores,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return convert(datasets.synthetic(), str(tmp_path_factory.mktemp("graphs") / "synthetic"), 2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> MemoryGraph:
    """Path 0-1-2-3 plus isolated node 4; node i has features [i, i, i] and label i % 2."""
    features = np.repeat(np.arange(5, dtype=np.float32)[:, None], 3, axis=1)
    graph = datasets.Graph("tiny", features, np.arange(5, dtype=np.int64) % 2,
                           np.array([[0, 1], [1, 2], [2, 3]], dtype=np.int64), np.array([0, 1]),
                           np.array([2]), np.array([3, 4]), 2)
    uri = convert(graph, str(tmp_path_factory.mktemp("graphs") / "tiny"), 2)
    return MemoryGraph(uri, [0, 1])


def test_prefetcher_yields_every_item_in_order_from_a_producer_thread() -> None:
    threads: set[int] = set()

    def make(i: int) -> int:
        threads.add(threading.get_ident())
        return i * i

    with Prefetcher(make, count=7, depth=2) as items:
        assert list(items) == [i * i for i in range(7)]
    assert threads and threading.get_ident() not in threads
    threads.clear()
    with Prefetcher(make, count=3, depth=0) as items:  # no overlap: made on demand, here
        assert list(items) == [0, 1, 4]
    assert threads == {threading.get_ident()}


def test_prefetcher_raises_the_producer_error_at_its_item_and_stops() -> None:
    def make(i: int) -> int:
        if i == 3:
            raise RuntimeError("sampling failed at 3")
        return i

    seen: list[int] = []
    with pytest.raises(RuntimeError, match="sampling failed at 3"), Prefetcher(make, count=10) as items:
        seen.extend(items)
    assert seen == [0, 1, 2]


def test_leaving_a_prefetch_loop_early_stops_its_thread() -> None:
    before = threading.active_count()
    with Prefetcher(lambda i: i, count=1000, depth=2) as items:
        assert next(items) == 0
    assert threading.active_count() == before


def test_batch_holds_sampled_neighbourhoods_features_and_labels(tiny: MemoryGraph) -> None:
    batch = sample_batch(tiny, np.array([0, 4]), fanouts=(3, 2), feature_dim=3, seed=1)
    assert batch.labels.tolist() == [0, 0]
    seeds = batch.features[batch.index[0]]
    assert seeds.tolist() == [[0.0] * 3, [4.0] * 3]
    # Node 0's only neighbour is 1 (sampled with replacement); isolated node 4 gets padding only.
    assert batch.masks[0].tolist() == [[True] * 3, [False] * 3]
    assert batch.features[batch.index[1][:3]].tolist() == [[1.0] * 3] * 3
    # Hop 2 below node 1 reaches 0 or 2; padding rows below node 4 stay masked.
    below_one = batch.features[batch.index[2][:6]][:, 0]
    assert set(below_one.tolist()) <= {0.0, 2.0} and batch.masks[1][:3].all()
    assert not batch.masks[1][3:].any()


def test_neighbours_beat_a_feature_only_model(synthetic_uri: str) -> None:
    """The synthetic graph's features are weak alone and strong averaged over neighbours."""
    info = GraphInfo.read(synthetic_uri)
    graph = MemoryGraph(synthetic_uri, [0, 1])
    sage = evaluate(fit(graph, info, TrainConfig(epochs=12), progress=False), graph)
    alone = evaluate(fit(graph, info, TrainConfig(epochs=12, fanouts=(0, 0), eval_fanouts=(0, 0)),
                         progress=False), graph)
    assert sage.test_accuracy > alone.test_accuracy + 0.2, (sage.test_accuracy, alone.test_accuracy)
    assert len(sage.train_loss) == len(sage.val_curve) == 12
    assert sage.val_accuracy == max(sage.val_curve) == sage.val_curve[sage.best_epoch - 1]


def test_fit_runs_torch_at_the_configured_threads_and_gives_the_old_setting_back(synthetic_uri: str) -> None:
    info = GraphInfo.read(synthetic_uri)
    graph = MemoryGraph(synthetic_uri, [0, 1])
    seen: set[int] = set()

    class Recording:
        """With prefetch 0 the batches are sampled in the training thread: what torch runs there."""

        def weighted_sample_neighbors(self, *args: object, **kwargs: object) -> object:
            seen.add(torch.get_num_threads())
            return graph.weighted_sample_neighbors(*args, **kwargs)

        def node_features(self, *args: object, **kwargs: object) -> object:
            return graph.node_features(*args, **kwargs)

    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    config = TrainConfig(epochs=1, prefetch=0, torch_threads=wanted)
    fit(Recording(), info, config, progress=False)  # type: ignore[arg-type]
    assert seen == {wanted} and torch.get_num_threads() == before
    with torch_threads(TrainConfig()) as default:  # a core left for the sampler and loopback servers
        assert default == torch.get_num_threads() == max(1, usable_cores() - 1)


@pytest.fixture
def fleet(synthetic_uri: str) -> Iterator[list[str]]:
    ports = [free_port(), free_port()]
    procs = [start(Path(synthetic_uri), port, i, 2) for i, port in enumerate(ports)]
    try:
        yield [f"127.0.0.1:{p}" for p in ports]
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate(timeout=30)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workflows.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_trains_through_servers_named_by_the_env_var(synthetic_uri: str, fleet: list[str],
                                                          tmp_path: Path) -> None:
    env = {**os.environ, ENDPOINTS_ENV: ",".join(fleet)}
    done = run_cli(["--info", f"{synthetic_uri}/graphfleet.json", "--epochs", "8", "--seed", "1",
                    "--out", str(tmp_path)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"graph data service: {', '.join(fleet)}" in done.stderr
    assert "epoch 8/8" in done.stderr and "val_acc=" in done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["endpoints"] == fleet and report["epochs"] == 8 and report["seed"] == 1
    assert report["test_accuracy"] > 0.45  # a feature-only model stays near 0.3 (test above)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_says_what_is_missing(synthetic_uri: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != ENDPOINTS_ENV}
    done = run_cli(["--info", synthetic_uri], env)
    assert done.returncode == 2 and f"{ENDPOINTS_ENV} is not set" in done.stderr
    done = run_cli(["--info", synthetic_uri, "--fanouts", "10,x"], env)
    assert done.returncode == 2 and "--fanouts" in done.stderr


def test_endpoints_and_graph_info_errors_name_the_fix(tmp_path: Path) -> None:
    assert endpoints_from_env({ENDPOINTS_ENV: "a:1, b:2"}) == ["a:1", "b:2"]
    with pytest.raises(ValueError, match="'localhost' is not host:port"):
        endpoints_from_env({ENDPOINTS_ENV: "localhost"})
    with pytest.raises(FileNotFoundError, match=f"no graphfleet.json at {tmp_path}"):
        GraphInfo.read(f"{tmp_path}/graphfleet.json")


def test_a_server_that_is_down_is_named_instead_of_aborting_the_process() -> None:
    down = f"127.0.0.1:{free_port()}"
    with pytest.raises(EndpointsNotReady, match=down):
        open_service([down], ready_seconds=1)


@pytest.mark.parametrize("bad, field", [({"epochs": 0}, "epochs"), ({"fanouts": ()}, "fanouts"),
                                        ({"eval_fanouts": (5,)}, "eval_fanouts"),
                                        ({"dropout": 1.0}, "dropout"),
                                        ({"torch_threads": -1}, "torch_threads")])
def test_bad_hyperparameters_name_the_field(bad: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**bad)  # type: ignore[arg-type]


def test_the_device_is_cuda_when_present_and_asking_for_a_missing_gpu_is_an_error() -> None:
    """No GPU on these machines: the selection logic is what is tested; bench/gpu_check.sh runs the rest."""
    assert resolve_device("auto", cuda_available=True) == torch.device("cuda")
    assert resolve_device("auto", cuda_available=False) == torch.device("cpu")
    assert resolve_device("cuda:1", cuda_available=True) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="torch sees no CUDA device here"):
        resolve_device("cuda", cuda_available=False)
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        TrainConfig(device="tpu")

