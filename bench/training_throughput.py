"""GraphSAGE training through the graph data service next to the same model on an in-process graph.

1. Throughput: training epoch time and samples/s through 1, 2 and 4 graph-engine servers (loopback
   subprocesses) vs an in-process `MemoryGraph`, with the prefetching sampler and without it
   (prefetch=0: sample, then train), at the trainer's default torch threads (cores - 1) and with
   torch on every core (torch's own default). Configurations are interleaved round by round and
   each ratio is taken from medians of the same run, since the machine is shared and noisy.
2. Data-parallel trainers: samples/s with 1 and 2 trainer ranks (local processes) through 2 servers
   vs the same ranks each loading the graph in process, interleaved in one run; and batch inference
   nodes/s over every node with 1 and 2 ranks through the same 2 servers.
3. Accuracy: Cora (standard split, 2 partitions, 2 servers) over 3 seeds with 1 and 2 trainers, and
   the synthetic default graph, each next to the feature-only baseline (the same model with fanouts
   0: no neighbours).

    .venv/bin/python -m bench.training_throughput [--servers 1,2,4] [--rounds 3] [--epochs 2] \
        [--trainers 1,2] [--seeds 0,1,2] [--device auto|cpu|cuda] [--skip-throughput] \
        [--skip-trainers] [--skip-accuracy] [--json out.json]

`--device cuda` puts the model and batches on the GPU (pinned, non-blocking copies) on both sides:
the step no longer hides the sampling cost, so the service/in-process ratio is the sampler's own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from deepgnn.graph_engine.snark.client import MemoryGraph

from graph_engine import datasets, health
from graph_engine.convert import convert
from tests.shared_data import PLANETOID_DIR as PLANETOID
from workflows import inference
from workflows.graph_client import open_service
from workflows.train import (
    GraphInfo,
    TrainConfig,
    evaluate,
    fit,
    fit_ranks,
    resolve_device,
    save,
    usable_cores,
)

BASELINE = {"fanouts": (0, 0), "eval_fanouts": (0, 0)}


def throughput_graph() -> datasets.Graph:
    """The synthetic model at 20k nodes, 64-d features, 4096 nodes to train on (64 batches per epoch)."""
    graph = datasets.synthetic(num_nodes=20_000, feature_dim=64, avg_degree=10.0)
    order = np.random.default_rng(1).permutation(graph.num_nodes)
    cut = 4096
    return dataclasses.replace(graph, train_ids=np.sort(order[:cut]), val_ids=np.sort(order[cut:cut + 256]),
                               test_ids=np.sort(order[cut + 256:cut + 512]))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fleet(uri: str, replicas: int, partitions: int) -> Iterator[list[str]]:
    """`replicas` graph-engine servers on loopback, ready; stopped (SIGTERM, then SIGKILL) on exit."""
    ports = [free_port() for _ in range(replicas)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "graph_engine.server", "--data-dir", uri, "--port", str(port),
         "--ordinal", str(i), "--replicas", str(replicas), "--partitions", str(partitions),
         "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, port in enumerate(ports)]
    endpoints = [f"127.0.0.1:{p}" for p in ports]
    try:
        health.wait_ready(endpoints, timeout=120)
        yield endpoints
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


def gil_release(graph: Any, info: GraphInfo, calls: int = 50) -> dict[str, Any]:
    """Does a DeepGNN client call let other Python threads run? A counter thread's count is read
    before and after each sampling call: had the call held the GIL, it could not move while it ran.
    Calls are large (2048 nodes x 400 samples, ~0.1 s) so that the OS schedules the counter within
    one even on busy cores."""
    ids = np.asarray(info.train_ids[:2048], dtype=np.int64)
    count = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            count[0] += 1

    moved = 0
    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        for i in range(calls):
            before = count[0]
            graph.weighted_sample_neighbors(ids, 0, count=400, seed=i)
            moved += count[0] > before
    finally:
        stop.set()
        spinner.join()
    return {"calls": calls, "share_of_calls_other_threads_ran_during": round(moved / calls, 3)}


def throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    partitions = max(args.servers)
    uri = convert(throughput_graph(), str(work / "throughput"), partitions)
    info = GraphInfo.read(uri)
    handles: dict[str, tuple[Any, list[str]]] = {
        "in-process": (MemoryGraph(uri, list(range(partitions))), [])}
    with contextlib.ExitStack() as stack:
        for n in args.servers:
            endpoints = stack.enter_context(fleet(uri, n, partitions))
            handles[f"{n} server{'s' if n > 1 else ''}"] = (open_service(endpoints), endpoints)
        gil = {name: gil_release(graph, info) for name, (graph, _) in handles.items()}
        for graph, endpoints in handles.values():  # warm-up: first-call costs out of the rounds
            fit(graph, info, TrainConfig(epochs=1, device=args.device), endpoints, progress=False)
        # (prefetch, torch threads); 0 threads = the trainer's default, cores - 1.
        variants = [(4, 0), (0, 0), (4, usable_cores())]
        seconds: dict[tuple[str, int, int], list[float]] = {
            (name, *v): [] for name in handles for v in variants}
        for round_ in range(args.rounds):
            for name, (graph, endpoints) in handles.items():
                for prefetch, threads in variants:
                    config = TrainConfig(epochs=args.epochs, seed=round_, prefetch=prefetch,
                                         torch_threads=threads, device=args.device)
                    report = fit(graph, info, config, endpoints, progress=False).report
                    seconds[(name, prefetch, threads)].append(report.train_seconds / args.epochs)
                    print(f"round {round_ + 1}/{args.rounds} {name:>10} prefetch={prefetch} "
                          f"threads={threads or 'default'}: {seconds[(name, prefetch, threads)][-1]:.2f}"
                          "s/epoch", file=sys.stderr, flush=True)
    samples = len(info.train_ids)
    rows = []
    for (name, prefetch, threads), values in seconds.items():
        # Against the in-process graph with prefetch at the same torch threads: the setting is fair
        # only if both sides get it.
        base = statistics.median(seconds[("in-process", 4, threads)])
        epoch = statistics.median(values)
        rows.append({"graph": name, "prefetch": prefetch,
                     "torch_threads": threads or max(1, usable_cores() - 1),
                     "epoch_seconds": round(epoch, 3), "samples_per_second": round(samples / epoch),
                     "ratio_vs_in_process": round(base / epoch, 3)})
    return {"train_nodes": samples, "batches_per_epoch": -(-samples // TrainConfig().batch_size),
            "fanouts": ",".join(map(str, TrainConfig().fanouts)), "rounds": args.rounds,
            "epochs_per_round": args.epochs, "rows": rows, "gil": gil}


def trainers(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Samples/s of `fit_ranks` at each trainer count, through 2 servers and in process, interleaved;
    then inference nodes/s over every node through the 2 servers at each count."""
    uri = convert(throughput_graph(), str(work / "trainers"), 2)
    info = GraphInfo.read(uri)
    rates: dict[tuple[int, str], list[float]] = {(n, where): [] for n in args.trainers
                                                  for where in ("in-process", "2 servers")}
    result: dict[str, Any] = {"train_nodes": len(info.train_ids), "epochs_per_round": args.epochs,
                              "rounds": args.rounds}
    with fleet(uri, 2, 2) as endpoints:
        for round_ in range(args.rounds):
            for n in args.trainers:
                for where, used in (("in-process", []), ("2 servers", endpoints)):
                    config = TrainConfig(epochs=args.epochs, seed=round_, device=args.device)
                    _, trained = fit_ranks(uri, config, used, trainers=n, progress=False)
                    rates[(n, where)].append(trained.report.samples_per_second)
                    print(f"round {round_ + 1}/{args.rounds} {n} trainer(s) {where}: "
                          f"{rates[(n, where)][-1]:.0f} samples/s", file=sys.stderr, flush=True)
        checkpoint = save(trained, work / "trainers-model.pt")
        nodes_per_second = {}
        for n in args.trainers:
            done = inference.infer(checkpoint, uri, str(work / f"predictions-{n}"), endpoints, trainers=n)
            nodes_per_second[n] = round(done.nodes_per_second)
            print(f"inference, {n} rank(s): {done.nodes} nodes, {nodes_per_second[n]} nodes/s",
                  file=sys.stderr)
    result["rows"] = [{"trainers": n, "graph": where, "samples_per_second": round(statistics.median(v)),
                       "ratio_vs_in_process": round(statistics.median(v) /
                                                    statistics.median(rates[(n, "in-process")]), 3)}
                      for (n, where), v in rates.items()]
    result["inference_nodes_per_second"] = nodes_per_second
    result["inference_nodes"] = info.num_nodes
    return result


def accuracy(name: str, graph: datasets.Graph, seeds: list[int], work: Path, device: str,
             trainer_counts: list[int], baseline: bool = True) -> dict[str, Any]:
    """Test accuracy per seed through 2 servers: GraphSAGE at each trainer count, and the feature-only
    baseline (one trainer)."""
    uri = convert(graph, str(work / name), 2)
    result: dict[str, Any] = {}
    with fleet(uri, 2, 2) as endpoints:
        service = open_service(endpoints)
        runs: list[tuple[str, dict[str, Any], int]] = [
            (f"graphsage, {n} trainer{'s' if n > 1 else ''}", {}, n) for n in trainer_counts]
        for model, extra, n in [*runs, *([("feature-only", BASELINE, 1)] if baseline else [])]:
            scores = []
            for seed in seeds:
                config = TrainConfig(seed=seed, device=device, **extra)  # type: ignore[arg-type]
                _, trained = fit_ranks(uri, config, endpoints, trainers=n, progress=False)
                scores.append(round(evaluate(trained, service, endpoints).test_accuracy, 4))
                print(f"{name} {model} seed {seed}: {scores[-1]}", file=sys.stderr, flush=True)
            result[model] = {"per_seed": scores, "median": statistics.median(scores)}
    return result


def markdown(results: dict[str, Any]) -> str:
    lines = []
    if "throughput" in results:
        t = results["throughput"]
        lines += [f"Throughput: {t['train_nodes']} training nodes, {t['batches_per_epoch']} batches of 64 "
                  f"per epoch, fanouts {t['fanouts']}, 64-d features; median of {t['rounds']} interleaved "
                  f"rounds of {t['epochs_per_round']} epochs.", "",
                  "| graph | prefetch | torch threads | s/epoch | samples/s "
                  "| vs in-process (prefetch 4, same threads) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['graph']} | {r['prefetch']} | {r['torch_threads']} | {r['epoch_seconds']} | "
                  f"{r['samples_per_second']} | {r['ratio_vs_in_process']} |" for r in t["rows"]]
        lines.append("")
        lines += [f"GIL: another Python thread ran during "
                  f"{g['share_of_calls_other_threads_ran_during']:.0%} of {g['calls']} sampling calls "
                  f"through {name}" for name, g in t["gil"].items()]
        lines.append("")
    if "trainers" in results:
        t = results["trainers"]
        lines += [f"Data-parallel trainers: {t['train_nodes']} training nodes, median of {t['rounds']} "
                  f"interleaved rounds of {t['epochs_per_round']} epochs; every rank loads the graph in "
                  "process, or all ranks share 2 servers.", "",
                  "| trainers | graph | samples/s | vs in-process (same trainers) |", "|---|---|---|---|"]
        lines += [f"| {r['trainers']} | {r['graph']} | {r['samples_per_second']} | "
                  f"{r['ratio_vs_in_process']} |" for r in t["rows"]]
        lines += ["", f"Inference over {t['inference_nodes']} nodes through 2 servers: " + ", ".join(
            f"{n} rank(s) {v} nodes/s" for n, v in t["inference_nodes_per_second"].items()), ""]
    for name in ("cora", "synthetic"):
        if name in results:
            lines += [f"{name}: {model} test accuracy {r['per_seed']} (median {r['median']})"
                      for model, r in results[name].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--trainers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-trainers", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--accuracy-graphs", default="cora,synthetic", help="graphs to measure accuracy on")
    parser.add_argument("--skip-baseline", action="store_true", help="no feature-only runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        work = Path(tmp)
        results["device"] = str(resolve_device(args.device))
        if not args.skip_throughput:
            results["throughput"] = throughput(args, work)
        if not args.skip_trainers:
            results["trainers"] = trainers(args, work)
        graphs = args.accuracy_graphs.split(",") if not args.skip_accuracy else []
        if "cora" in graphs:
            cora = datasets.load("cora", PLANETOID)
            results["cora"] = accuracy("cora", cora, args.seeds, work, args.device, args.trainers,
                                       not args.skip_baseline)
        if "synthetic" in graphs:
            results["synthetic"] = accuracy("synthetic", datasets.load("synthetic"), args.seeds, work,
                                            args.device, [1], not args.skip_baseline)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"device: {results['device']}")
    print(markdown(results))


if __name__ == "__main__":
    main()
