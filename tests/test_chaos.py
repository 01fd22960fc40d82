"""Issue 8's chaos run, short: a few fleets through 2 connector replicas (distinct hostnames, real
gRPC, one self-managed state backend through the fake CLI) while replicas and CLIs are SIGKILLed and
SIGTERMed. The full run (32 fleets) is `bench/chaos.py`; its figures are in docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import FAILURES, KINDS, run
from tests.hostnames import needs_uts

pytestmark = pytest.mark.slow


@needs_uts
def test_kills_of_replicas_and_clis_leak_nothing_delete_nothing_wrong_and_end_in_the_right_phase(
        tmp_path: Path) -> None:
    report = run(fleets=3, seed=3, every=(1.5, 3.0), scratch=tmp_path, ready_limit=240)
    assert set(report["kills"]) == set(KINDS), report  # the run met every kind of kill
    assert report["outcomes"] == {"keep:succeeded": 1, "release:deleted": 1, "abort:deleted": 1}, report
    for failure in FAILURES:
        assert not report[failure], (failure, report)
