"""What a fleet and a training run look like in Flyte: the servers table and the training Deck.

The data-service task is a connector task: flyteplugins' connector plugin turns GetTask into a phase,
a message, log links and `custom_info` (webapi/connector/plugin.go Status()), and sets no Deck URI, so
a connector task cannot show a Deck. Its servers (partitions, endpoint, phase, restarts, age) travel in
`custom_info` instead, shown with the task execution. The tasks that run in pods render Decks: the
evaluation task a "data service" Deck of the fleet it reads from (each endpoint's partitions and
whether it answers SERVING now), and the final task a "training" Deck with the curves and the report.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flyte_agent.provisioner import ServerState
from infra.spec import DataServiceSpec, assign_partitions


def server_rows(spec: DataServiceSpec, servers: Sequence[ServerState], now: float | None = None
                ) -> list[dict[str, Any]]:
    """One row per server: what the Deck table and `custom_info` show."""
    now = time.time() if now is None else now
    held = assign_partitions(spec.replicas, spec.partitions) if spec.partitions else [[] for _ in servers]
    return [{"ordinal": s.ordinal, "endpoint": s.endpoint, "partitions": held[s.ordinal] if s.ordinal < len(
                held) else [], "phase": s.phase.value, "restarts": s.restarts, "last_exit": s.reason,
             "age_seconds": round(now - s.started_at) if s.started_at else None}
            for s in servers]


def custom_info(spec: DataServiceSpec, servers: Sequence[ServerState]) -> dict[str, Any] | None:
    """GetTask's `custom_info`: the servers table, or None when the backend cannot see the servers."""
    return {"servers": server_rows(spec, servers)} if servers else None


def table(rows: Sequence[dict[str, Any]]) -> str:
    """An HTML table of dicts, every value escaped; lists joined with commas, None as '-'."""
    if not rows:
        return "<p>no servers</p>"
    columns = list(rows[0])

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, list):
            return ", ".join(str(v) for v in value)
        return str(value)

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r[c]))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fleet_html(endpoints: Sequence[str], partitions: int, not_serving: Sequence[str]) -> str:
    """The data service as a pod reading from it sees it: endpoints, their partitions, SERVING or not."""
    held = assign_partitions(len(endpoints), partitions)
    rows = [{"ordinal": i, "endpoint": e, "partitions": held[i],
             "ready": "no" if e in not_serving else "SERVING"} for i, e in enumerate(endpoints)]
    return f"<h3>{len(endpoints)} graph-engine servers, {partitions} partitions</h3>" + table(rows)


def training_html(report: dict[str, Any], curves_png: Path | None) -> str:
    """The curves (inlined PNG: a Deck is one self-contained HTML file) and the report's fields."""
    image = ""
    if curves_png is not None and curves_png.is_file():
        data = base64.b64encode(curves_png.read_bytes()).decode()
        image = f'<img alt="training curves" src="data:image/png;base64,{data}"/>'
    rows = [{"field": k, "value": v if not isinstance(v, float) else round(v, 4)} for k, v in report.items()]
    return image + table(rows)
