"""Data-parallel trainer ranks: seed shards, identical models on every rank, and a rank that dies or
hangs failing the run within the collective timeout instead of hanging it."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from graph_engine import datasets
from graph_engine.convert import convert
from workflows import ranks
from workflows.ranks import Rank, RankFailed, shard
from workflows.train import TrainConfig, fit_ranks

SMALL = TrainConfig(epochs=3, hidden=32, fanouts=(10, 5), eval_fanouts=(10, 5), collective_seconds=60)


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    graph = datasets.synthetic(num_nodes=600, feature_dim=16, avg_degree=6.0, seed=3, feature_signal=0.6)
    return convert(graph, str(tmp_path_factory.mktemp("graphs") / "g"), 2)


def test_shards_cover_every_id_with_equal_step_counts_for_training_and_once_for_evaluation() -> None:
    ids = np.arange(10)
    train = [shard(ids, Rank(r, 3), pad=True) for r in range(3)]
    assert [len(s) for s in train] == [4, 4, 4] and set(np.concatenate(train)) == set(ids)
    evaluation = [shard(ids, Rank(r, 3), pad=False) for r in range(3)]
    assert sorted(np.concatenate(evaluation).tolist()) == ids.tolist()
    with pytest.raises(ValueError, match="need 0 <= rank < trainers"):
        Rank(2, 2)


@pytest.fixture
def rank_one() -> Iterator[list[int]]:
    """The pid of trainer rank 1 once it is spawned (watched from a thread: fit_ranks blocks)."""
    found: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not found:
            found.extend(c.pid for c in multiprocessing.active_children()
                         if c.name == "trainer-rank-1" and c.pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield found
    stop.set()
    watcher.join(5)


def signal_once_training(pids: list[int], sig: signal.Signals,
                         monkeypatch: pytest.MonkeyPatch) -> threading.Thread:
    """Send `sig` to rank 1 once it is training: after rank 0 (this process) has averaged one step's
    gradients, an all-reduce that rank 1 took part in. Not after a fixed time, which on a loaded
    machine can land while rank 1 still starts (another failure) or, on a fast one, after the run."""
    stepped = threading.Event()
    average = ranks.average_gradients

    def averaged(model: torch.nn.Module, rank: Rank) -> None:
        average(model, rank)
        stepped.set()

    monkeypatch.setattr(ranks, "average_gradients", averaged)

    def send() -> None:
        if stepped.wait(120) and pids:
            os.kill(pids[0], sig)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def test_a_rank_that_dies_fails_the_run_naming_it(uri: str, rank_one: list[int],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = dataclasses.replace(SMALL, epochs=200)
    killer = signal_once_training(rank_one, signal.SIGKILL, monkeypatch)
    started = time.monotonic()
    with pytest.raises(RankFailed, match=r"rank 1 \(exit -9\)"):
        fit_ranks(uri, config, trainers=2, progress=False)
    killer.join(5)
    assert time.monotonic() - started < 60 + config.collective_seconds
    assert not multiprocessing.active_children()


def test_a_rank_that_hangs_fails_the_run_at_the_collective_timeout(uri: str, rank_one: list[int],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = dataclasses.replace(SMALL, epochs=200, collective_seconds=15)
    stopper = signal_once_training(rank_one, signal.SIGSTOP, monkeypatch)
    started = time.monotonic()
    with pytest.raises(Exception, match="(?i)timed out|timeout"):
        fit_ranks(uri, config, trainers=2, progress=False)
    stopper.join(5)
    assert time.monotonic() - started < 60 + 4 * config.collective_seconds
    assert not multiprocessing.active_children()  # the stopped rank was killed, not left behind


def test_a_pytorchjob_replica_reads_its_rank_from_the_operators_env() -> None:
    env = {"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "3", "RANK": "2"}
    assert ranks.from_env(env) == Rank(2, 3)
    assert ranks.from_env({}) is None
    with pytest.raises(ValueError, match="MASTER_ADDR unset"):
        ranks.from_env({**env, "MASTER_ADDR": ""})


def test_two_ranks_train_one_model_on_their_shards(uri: str) -> None:
    """Ranks end bit-identical (ranks.check_same_model raises otherwise) and report their samples.
    Last in this file: the task process has run failed ranks before (a fresh rank process must still
    meet it: the group has a fixed name, not torch's per-process counter)."""
    rank, trained = fit_ranks(uri, SMALL, trainers=2, progress=False)
    report = trained.report
    assert rank == Rank(0, 2, 2) and report.trainers == 2
    train = len(trained.info.train_ids)
    assert report.rank_samples == [-(-train // 2) * SMALL.epochs] * 2
    assert report.val_accuracy == max(report.val_curve) == report.val_curve[report.best_epoch - 1]
    assert report.samples_per_second == pytest.approx(sum(report.rank_samples) / report.train_seconds)
