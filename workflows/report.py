"""What a training run reports: the `TrainingReport` the workflow returns, and its curves as a PNG."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class TrainingReport:
    """One run of GraphSAGE training through a graph data service (or an in-process graph)."""

    dataset: str = ""
    seed: int = 0
    epochs: int = 0
    test_accuracy: float = 0.0
    val_accuracy: float = 0.0          # of the kept model (the epoch with the best validation accuracy)
    best_epoch: int = 0
    train_seconds: float = 0.0         # training epochs only, validation excluded
    samples_per_second: float = 0.0    # training seed nodes per second of train_seconds
    endpoints: list[str] = field(default_factory=list)  # empty: an in-process graph
    train_loss: list[float] = field(default_factory=list)  # per epoch
    val_curve: list[float] = field(default_factory=list)   # validation accuracy per epoch
    retried_batches: int = 0           # batches sampled again after a graph-engine outage
    trainers: int = 1                  # data-parallel ranks
    rank_samples: list[int] = field(default_factory=list)  # training seeds each rank stepped on, all epochs
    predictions: str = ""              # the inference Parquet dataset (local path or s3:// URI), if any

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainingReport:
        return cls(**json.loads(text))

    def summary(self) -> str:
        where = f"{len(self.endpoints)} graph-engine server(s)" if self.endpoints else "an in-process graph"
        who = f"{self.trainers} trainers" if self.trainers > 1 else "1 trainer"
        text = (f"{self.dataset}: test accuracy {self.test_accuracy:.4f}, validation {self.val_accuracy:.4f} "
                f"(epoch {self.best_epoch}/{self.epochs}); {self.train_seconds:.1f}s training, "
                f"{self.samples_per_second:.0f} samples/s, {who} through {where}")
        return text + (f"; predictions: {self.predictions}" if self.predictions else "")


def plot_curves(report: TrainingReport, path: Path) -> Path:
    """Training loss and validation accuracy per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")  # no display in pods and CI
    import matplotlib.pyplot as plt

    epochs = range(1, len(report.train_loss) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(epochs, report.train_loss)
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    right.plot(epochs, report.val_curve, color="tab:orange")
    right.axvline(report.best_epoch, color="grey", linestyle=":", label=f"kept (epoch {report.best_epoch})")
    right.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy", ylim=(0, 1))
    right.legend(loc="lower right")
    fig.suptitle(f"GraphSAGE on {report.dataset} (seed {report.seed})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
