"""Issue 8's chaos run, short: a few fleets through 2 connector replicas (distinct hostnames, real
gRPC, one self-managed backend through the fake CLI) while replicas and CLIs are SIGKILLed and
SIGTERMed. The full run (32 fleets) is `bench/chaos.py`; its figures are in docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import run
from tests.hostnames import needs_uts

pytestmark = pytest.mark.slow


@needs_uts
def test_kills_of_replicas_and_clis_leak_nothing_delete_nothing_wrong_and_end_in_the_right_phase(
        tmp_path: Path) -> None:
    report = run(fleets=3, seed=3, every=(1.5, 3.0), scratch=tmp_path, ready_limit=240)
    assert sum(report["kills"].values()) >= 2, report  # the run did meet chaos
    assert report["leaked_stacks"] == [] and report["leaked_objects"] == [], report
    assert report["wrong_deletions"] == [], report
    assert report["wrong_phases"] == [], report
    assert report["locks_never_recovered"] == 0, report
