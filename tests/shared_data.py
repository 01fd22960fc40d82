"""Where the team's read-only shared data lives: `shared/` beside the checkout, as on every developer
machine and in CI (GRAPHFLEET_SHARED_DIR overrides). Tests and benchmarks read it; it is never copied in."""

import os
from pathlib import Path

SHARED_DIR = Path(os.environ.get("GRAPHFLEET_SHARED_DIR") or Path(__file__).resolve().parents[2] / "shared")
PLANETOID_DIR = SHARED_DIR / "data" / "planetoid"
