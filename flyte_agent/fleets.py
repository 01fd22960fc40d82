"""The operator's view of live fleets: what `graphfleet fleets [--json]` prints, from either backend.

One listing (`Provisioner.fleets()`) feeds this, the `graphfleet_fleets` gauge and the Deck; here it is
turned into a table for people and JSON for scripts.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from flyte_agent.provisioner import FleetInfo
from flyte_agent.settings import Settings, make_provisioner

COLUMNS = ("NAME", "OWNER", "EXECUTION/LEASES", "PHASE", "AGE", "EXPIRES IN", "REPLICAS", "ENDPOINTS")


def listing(settings: Settings) -> list[FleetInfo]:
    """Every live fleet of the backend `settings` name; no sweep or reconciler is started for it."""
    provisioner = make_provisioner(settings.model_copy(update={"gc_interval_seconds": 0}))
    try:
        return sorted(provisioner.fleets(), key=lambda f: (f.owner, f.name))
    finally:
        close = getattr(provisioner, "close", None)
        if close is not None:
            close()


def duration(seconds: float) -> str:
    """`3d4h`, `2h5m`, `4m10s`, `12s` (kubectl-like); `-` for unknown, `expired` for the past."""
    if seconds < 0:
        return "expired"
    s = int(seconds)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            rest = (s % size) // subsize
            return f"{s // size}{unit}{rest}{sub}" if rest else f"{s // size}{unit}"
    return f"{s}s"


def rows(fleets: list[FleetInfo], now: float | None = None) -> list[tuple[str, ...]]:
    now = time.time() if now is None else now
    out: list[tuple[str, ...]] = []
    for f in fleets:
        holders = ", ".join(f.leases) if f.leases else f.execution
        serving = sum(1 for s in f.servers if s.phase.value == "serving")
        replicas = f"{serving}/{f.replicas}" if f.servers else str(f.replicas)
        out.append((f.name, f.owner, holders, f.phase.value,
                    duration(now - f.created_at) if f.created_at else "-",
                    duration(f.expires_at - now) if f.expires_at else "-",
                    replicas, ",".join(f.endpoints) or "-"))
    return out


def table(fleets: list[FleetInfo], now: float | None = None) -> str:
    lines = [COLUMNS, *rows(fleets, now)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def as_json(fleets: list[FleetInfo]) -> list[dict[str, Any]]:
    """Every field, enums by value: stable keys for scripts (docs/operators.md, "graphfleet fleets")."""
    def plain(value: Any) -> Any:
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return getattr(value, "value", value)

    return [plain(dataclasses.asdict(f)) for f in fleets]
