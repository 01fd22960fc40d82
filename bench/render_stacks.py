"""How rendering a datacenter stack scales: 1, 10 and 100 shared graph services, 2 and 16 replicas each.

    .venv/bin/python bench/render_stacks.py

Prints seconds and resource counts per case. The object count grows with the number of services
(four objects each), never with replicas: a StatefulSet stands for all its pods.
"""

from __future__ import annotations

import copy
import time

import yaml

from infra.config import STACKS_DIR, stack_config_from_mapping
from infra.datacenter import program
from infra.render import render


def stack_with(services: int, replicas: int) -> dict:
    config = copy.deepcopy(yaml.safe_load((STACKS_DIR / "Pulumi.lva1.yaml").read_text())["config"])
    config["graphfleet:sharedServices"] = [
        {"name": f"graph-{i}", "spec": {"graphUri": f"s3://lva1-graphs/graph-{i}", "replicas": replicas,
                                        "partitions": 32, "memory": "16Gi"}}
        for i in range(services)]
    return config


def main() -> None:
    print(f"{'services':>8} {'replicas':>8} {'resources':>9} {'k8s objects':>11} {'seconds':>8}")
    for services in (1, 10, 100):
        for replicas in (2, 16):
            config = stack_config_from_mapping(stack_with(services, replicas), "bench", "lva1")
            start = time.perf_counter()
            rendered = render(lambda config=config: program(config), stack="lva1")
            seconds = time.perf_counter() - start
            print(f"{services:>8} {replicas:>8} {len(rendered.resources):>9} {len(rendered.manifests()):>11} "
                  f"{seconds:>8.2f}")


if __name__ == "__main__":
    main()
