"""Data-parallel trainer ranks: seed shards, identical models on every rank, a rank that exits or is
killed failing the run within seconds (naming its exit cause, with its last output), and one that hangs
failing it at the collective timeout instead of hanging it."""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from graph_engine import datasets
from graph_engine.convert import convert
from tests import rank_bodies
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
            pid = rank_bodies.rank_pids().get(1)
            if pid:
                found.append(pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    yield found
    stop.set()
    watcher.join(5)


def signal_once_training(pids: list[int], sig: signal.Signals, monkeypatch: pytest.MonkeyPatch,
                         sent: list[float] | None = None) -> threading.Thread:
    """Send `sig` to rank 1 once it is training: after rank 0 (this process) has averaged one step's
    gradients, an all-reduce that rank 1 took part in. Not after a fixed time, which on a loaded
    machine can land while rank 1 still starts (another failure) or, on a fast one, after the run.
    The monotonic time it was sent is appended to `sent`."""
    stepped = threading.Event()
    average = ranks.average_gradients

    def averaged(model: torch.nn.Module, rank: Rank) -> None:
        average(model, rank)
        stepped.set()

    monkeypatch.setattr(ranks, "average_gradients", averaged)

    def send() -> None:
        if stepped.wait(120) and pids:
            os.kill(pids[0], sig)
            if sent is not None:
                sent.append(time.monotonic())

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
    assert not multiprocessing.active_children() and not rank_bodies.rank_pids()


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
    assert not rank_bodies.rank_pids()


@pytest.mark.parametrize("how, cause", [
    pytest.param("exit", r"rank 1 \(exit 3\).*exited with code 3", id="exit"),
    pytest.param("kill", r"rank 1 \(exit -9\).*killed by SIGKILL", id="kill")])
def test_a_rank_that_exits_while_starting_fails_the_run_at_once(how: str, cause: str) -> None:
    """Rank 1 ends before it joins the group while rank 0 waits there for it: the run fails in seconds,
    not at the group's 300 s timeout, with rank 1's exit cause and its last output. The bound counts
    rank 1's own start-up too (a fresh interpreter importing torch)."""
    started = time.monotonic()
    with pytest.raises(RankFailed, match=f"(?s){cause}") as failed:
        ranks.local_ranks(2, functools.partial(rank_bodies.leave_before_joining, how), timeout_seconds=300)
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"the run failed {elapsed:.1f} s after it started"
    assert "rank 1: reading the graph\n" in str(failed.value)
    assert str(failed.value).endswith("rank 1: no memory left for the features")
    assert not rank_bodies.rank_pids()


def test_a_rank_killed_while_training_fails_the_run_within_seconds(uri: str, rank_one: list[int],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL to rank 1 after a training step, with the collective timeout at 300 s: rank 0 fails
    within seconds of the kill, naming the signal and showing rank 1's last output."""
    config = dataclasses.replace(SMALL, epochs=200, collective_seconds=300)
    sent: list[float] = []
    killer = signal_once_training(rank_one, signal.SIGKILL, monkeypatch, sent)
    body = functools.partial(rank_bodies.fit_announced, uri, config)
    with pytest.raises(RankFailed, match=r"(?s)rank 1 \(exit -9\).*killed by SIGKILL") as failed:
        ranks.launch(2, body, config.collective_seconds)
    noticed = time.monotonic() - sent[0]
    killer.join(5)
    assert noticed < 10, f"rank 0 noticed the kill after {noticed:.1f} s"
    assert f"rank 1 of 2: training on {uri}" in str(failed.value)
    assert not rank_bodies.rank_pids()


# Run with `python -` (standard input): `__main__` is "<stdin>", which no other interpreter can import.
STDIN_RUN = """
import functools, json, time
from tests import rank_bodies
from workflows import ranks
from workflows.train import TrainConfig, fit_ranks

config = TrainConfig(epochs=1, hidden=16, fanouts=(5,), eval_fanouts=(5,))
rank, trained = fit_ranks({uri!r}, config, trainers=2, progress=False)
started = time.monotonic()
try:
    ranks.local_ranks(2, functools.partial(rank_bodies.leave_before_joining, "exit"), timeout_seconds=300)
except ranks.RankFailed as err:
    failure = str(err)
print(json.dumps({{"trainers": trained.report.trainers, "samples": trained.report.rank_samples,
                  "failure": failure, "seconds": time.monotonic() - started}}))
"""


def test_ranks_of_a_run_started_from_standard_input_train_and_fail_fast(uri: str) -> None:
    """Rank processes import nothing from the caller's `__main__`: a run started from standard input
    trains with 2 ranks, and a rank that exits while starting still fails it in seconds with its cause.
    Standard input stands for the other callers a rank must not depend on (a notebook kernel, `pyflyte
    run`, a script with or without a main guard): a rank imports the body's module, never `__main__`,
    and standard input is the case where re-importing `__main__` cannot work at all."""
    done = subprocess.run([sys.executable, "-"], input=STDIN_RUN.format(uri=uri), capture_output=True,
                          text=True, timeout=240, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trainers"] == 2 and len(result["samples"]) == 2
    assert result["seconds"] < 15, result  # rank 1's start-up included
    assert "rank 1 (exit 3)" in result["failure"] and "exited with code 3" in result["failure"]
    assert result["failure"].endswith("rank 1: no memory left for the features")


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
