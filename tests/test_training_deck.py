"""The workflow's `finish` task renders its "training" Deck in a local run (flytekit writes deck.html)."""

from __future__ import annotations

import time
from pathlib import Path

from flytekit.core.context_manager import FlyteContextManager

from workflows.gnn_training import TrainOutcome, finish
from workflows.report import TrainingReport


def test_finish_renders_the_training_deck() -> None:
    sandbox = Path(FlyteContextManager.current_context().file_access.local_sandbox_dir)
    started = time.time()
    report = TrainingReport(dataset="cora-deck-test", test_accuracy=0.8123456, train_loss=[1.0, 0.5])
    assert finish(outcome=TrainOutcome(report=report), released="gf-x: released") == report
    written = [p for p in sandbox.rglob("deck.html") if p.stat().st_mtime >= started - 1]
    pages = [p.read_text() for p in written]
    assert any("cora-deck-test" in page and "<td>0.8123</td>" in page for page in pages), written
