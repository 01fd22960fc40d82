"""Evaluation fanouts chosen on validation accuracy only (never test).

For each training seed, GraphSAGE is trained once on Cora with the default configuration (training
fanouts 25,10), then the kept model's validation accuracy is measured with each candidate evaluation
fanout, over several sampling seeds different from the ones model selection used. The candidate with
the best median validation accuracy is the choice, a tie going to the cheaper one (candidates are
listed in increasing sample size); the test split is not read.

    .venv/bin/python -m bench.eval_fanout_sweep [--seeds 0,1,2] \\
        [--candidates 10,10:25,10:25,25:40,25:60,40] \\
        [--eval-seeds 3] [--json out.json]

In process (`MemoryGraph`): sampling through servers has the same distribution
(tests/test_ml_invariants.py), and this keeps the sweep off the shared machine's loopback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from deepgnn.graph_engine.snark.client import MemoryGraph

from graph_engine import datasets
from graph_engine.convert import convert
from tests.shared_data import PLANETOID_DIR
from workflows.train import GraphInfo, Sampling, TrainConfig, accuracy, fit, torch_threads


def fanouts(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def sweep(seeds: list[int], candidates: list[tuple[int, ...]], eval_seeds: int, work: Path) -> dict[str, Any]:
    uri = convert(datasets.load("cora", PLANETOID_DIR), str(work / "cora"), 2)
    info = GraphInfo.read(uri)
    graph = MemoryGraph(uri, [0, 1])
    scores: dict[str, list[float]] = {",".join(map(str, c)): [] for c in candidates}
    for seed in seeds:
        trained = fit(graph, info, TrainConfig(seed=seed), progress=False)
        sampling = Sampling(graph, info.feature_dim)
        for candidate in candidates:
            config = dataclasses.replace(trained.config, eval_fanouts=candidate)
            with torch_threads(config):
                # Sampling seeds 10_000+: none of them is one that model selection (-epoch) used.
                values = [accuracy(trained.model, sampling, info.val_ids, config, seed=10_000 + 97 * seed + k)
                          for k in range(eval_seeds)]
            name = ",".join(map(str, candidate))
            scores[name].append(statistics.mean(values))
            print(f"seed {seed} eval fanouts {name}: validation {scores[name][-1]:.4f}", file=sys.stderr,
                  flush=True)
    medians = {name: round(statistics.median(v), 4) for name, v in scores.items()}
    return {"seeds": seeds, "eval_seeds": eval_seeds, "per_seed": scores, "median_validation": medians,
            "chosen": max(medians, key=lambda name: medians[name])}  # first of equals: the cheapest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--candidates", type=lambda s: [fanouts(c) for c in s.split(":")],
                        default=[(10, 10), (25, 10), (25, 25), (40, 25), (60, 40)])
    parser.add_argument("--eval-seeds", type=int, default=3, help="sampling seeds per candidate and model")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-fanouts-") as tmp:
        result = sweep(args.seeds, args.candidates, args.eval_seeds, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print("| eval fanouts | median validation accuracy |\n|---|---|")
    for name, value in result["median_validation"].items():
        print(f"| {name} | {value} |")
    print(f"chosen on validation: {result['chosen']}")


if __name__ == "__main__":
    main()
