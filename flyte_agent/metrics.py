"""The connector's own Prometheus metrics, `graphfleet_*`, on the port `pyflyte serve connector` exposes.

flytekit 1.16's connector server (`flytekit/clis/sdk_in_container/serve.py`, `_start_http_server`)
serves prometheus_client's default registry on `--prometheus_port` (9090), next to its own
`flyte_connector_*` request counters; registering here, in that registry, puts ours on the same port.
Nothing else is needed in the Deployment beyond scraping that port.

Families (names and labels are a contract with dashboards; docs/operators.md "Metrics" lists them):

- `graphfleet_fleets{backend,phase}`: live fleets by phase, from what the provisioner last observed
  (`observed_fleets()`): on Pulumi the listing its sweep makes as it starts and after each gc pass,
  so a scrape starts no CLI process; locally a listing of its state files at the scrape. No samples
  before the first one.
- `graphfleet_fleets_age_seconds{backend}`: how old that observation is.
- `graphfleet_provision_seconds{backend}`: CreateTask to the GetTask that reported the fleet ready.
- `graphfleet_teardown_seconds{backend,outcome}`: one teardown call (DeleteTask, a teardown task's
  release, `graphfleet fleets release`); outcome `released`, `in_progress` or `failed`.
- `graphfleet_pulumi_operations_total{operation,outcome}`: Pulumi CLI operations, by outcome.
- `graphfleet_gc_collected_total{backend}`, `graphfleet_gc_failed_total{backend}`: expired fleets
  torn down, and those a pass failed on.
- `graphfleet_leases_held{backend}`: leases on shared fleets, from the same observation.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from flyte_agent.provisioner import Phase

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from flyte_agent.provisioner import FleetInfo

# Fleets take seconds locally and minutes on a cluster (image pulls, partition downloads).
_PROVISION_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_TEARDOWN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

PROVISION_SECONDS = Histogram("graphfleet_provision_seconds",
                              "Seconds from CreateTask to the GetTask that found every server ready",
                              ["backend"], buckets=_PROVISION_BUCKETS)
TEARDOWN_SECONDS = Histogram("graphfleet_teardown_seconds", "Seconds one teardown call took, by outcome",
                             ["backend", "outcome"], buckets=_TEARDOWN_BUCKETS)
PULUMI_OPERATIONS = Counter("graphfleet_pulumi_operations", "Pulumi CLI operations by outcome",
                            ["operation", "outcome"])
GC_COLLECTED = Counter("graphfleet_gc_collected", "Expired fleets torn down by garbage collection",
                       ["backend"])
GC_FAILED = Counter("graphfleet_gc_failed", "Expired fleets a garbage-collection pass failed to tear down",
                    ["backend"])


@contextlib.contextmanager
def timed_teardown(backend: str) -> Iterator[None]:
    """Observe one teardown call; its outcome from how it ended (DestroyInProgress: still going)."""
    from flyte_agent.provisioner import DestroyInProgress

    start = time.monotonic()
    outcome = "failed"
    try:
        yield
        outcome = "released"
    except DestroyInProgress:
        outcome = "in_progress"
        raise
    finally:
        TEARDOWN_SECONDS.labels(backend, outcome).observe(time.monotonic() - start)


def observe_gc(backend: str, collected: int, failed: int) -> None:
    GC_COLLECTED.labels(backend).inc(collected)
    GC_FAILED.labels(backend).inc(failed)


# (epoch seconds when the fleets were listed, the fleets): a provisioner's `observed_fleets()`.
Observation = tuple[float, Sequence["FleetInfo"]]


class FleetCollector(Collector):
    """`graphfleet_fleets`, `graphfleet_leases_held` and `graphfleet_fleets_age_seconds` from what the
    provisioner last observed: a scrape every few seconds must not become a listing (CLI calls per
    stack on Pulumi) every few seconds."""

    def __init__(self, backend: str, observed: Callable[[], Observation | None],
                 clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self._observed = observed
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        # Without it, registering would collect, i.e. ask the provisioner, at start-up.
        yield from self._families(None)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._observed())

    def _families(self, observed: Observation | None) -> Iterator[Metric]:
        by_phase = GaugeMetricFamily("graphfleet_fleets", "Live fleets by phase", labels=["backend", "phase"])
        leases = GaugeMetricFamily("graphfleet_leases_held", "Leases held on shared fleets",
                                   labels=["backend"])
        age = GaugeMetricFamily("graphfleet_fleets_age_seconds",
                                "Seconds since the fleets these gauges count were listed", labels=["backend"])
        if observed is not None:
            listed_at, fleets = observed
            counts = Tally(f.phase for f in fleets)
            for phase in Phase:
                if phase is not Phase.ABSENT:
                    by_phase.add_metric([self.backend, phase.value], counts[phase])
            leases.add_metric([self.backend], sum(len(f.leases) for f in fleets))
            age.add_metric([self.backend], max(0.0, self._clock() - listed_at))
        yield by_phase
        yield leases
        yield age


_registered: dict[str, FleetCollector] = {}


def register_fleets(backend: str, observed: Callable[[], Observation | None]) -> None:
    """Expose the fleet gauges of this process's provisioner (once per process and backend)."""
    if backend not in _registered:
        _registered[backend] = FleetCollector(backend, observed)
        REGISTRY.register(_registered[backend])
