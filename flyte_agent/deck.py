"""What a fleet and a training run look like in Flyte: the data service's Deck, the servers table and
the training Deck.

The data-service task is a connector task. Propeller gives every task, whatever its plugin, a Deck at
`<output_prefix>/deck.html` (flytepropeller v1.16.2 pkg/controller/nodes/task/handler.go
`invokePlugin`: with the template's `generates_deck` unset, a succeeded task gets the Deck URI when
that file exists, by a HEAD on it; flyteplugins ioutils/paths.go `deckSuffix`), and CreateTask hands
the connector that `output_prefix` (webapi/connector/plugin.go Create). So the connector writes the
fleet's Deck there when GetTask sees it ready (or failed): servers with partitions, endpoints, phase,
restarts and age, and the log links. The same table also travels in GetTask's `custom_info`. A failed
task gets no Deck URI from propeller with `generates_deck` unset (the HEAD is made for successes only),
so a failure's Deck file is written but shown only by `generates_deck` tasks; its message and log
links say what failed. The tasks that run in pods render their own Decks: the evaluation task a "data
service" Deck of the fleet it reads from, and the final task a "training" Deck.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flyte_agent.provisioner import Provision, ServerState, Status
from infra.contract import assign_partitions
from infra.spec import DataServiceSpec


def server_rows(spec: DataServiceSpec, servers: Sequence[ServerState], now: float | None = None
                ) -> list[dict[str, Any]]:
    """One row per server: what the Deck table and `custom_info` show."""
    now = time.time() if now is None else now
    held = assign_partitions(spec.replicas, spec.partitions) if spec.partitions else [[] for _ in servers]
    return [{"ordinal": s.ordinal, "endpoint": s.endpoint, "partitions": held[s.ordinal] if s.ordinal < len(
                held) else [], "phase": s.phase.value, "restarts": s.restarts, "last_exit": s.reason,
             "age_seconds": round(now - s.started_at) if s.started_at else None}
            for s in servers]


log = logging.getLogger(__name__)
DECK_FILE = "deck.html"  # flyteplugins ioutils/paths.go deckSuffix


def fleet_deck_html(provision: Provision, status: Status, links: Sequence[Any] = ()) -> str:
    """The data-service task's Deck: one self-contained HTML page."""
    spec = provision.spec
    title = (f"data service {provision.name}: {status.phase.value}, {spec.replicas} server(s), "
             f"{spec.partitions} partitions")
    where = f"graph {spec.graph_uri}; endpoints {','.join(status.endpoints) or '-'}"
    body = [f"<h2>{html.escape(title)}</h2>", f"<p>{html.escape(where)}</p>"]
    if status.message:
        body.append(f"<pre>{html.escape(status.message)}</pre>")
    body.append(table(server_rows(spec, status.servers)))
    if links:
        items = "".join(f'<li><a href="{html.escape(link.uri)}">{html.escape(link.name)}</a></li>'
                        for link in links)
        body.append(f"<h3>logs</h3><ul>{items}</ul>")
    return "<html><body>" + "".join(body) + "</body></html>"


def write_fleet_deck(output_prefix: str, provision: Provision, status: Status, links: Sequence[Any] = ()
                     ) -> None:
    """Write the Deck where propeller looks; best effort: a Deck that cannot be written (no write
    access to Flyte's metadata bucket) is logged, never a failed task."""
    if not output_prefix:
        return
    import fsspec

    try:
        with fsspec.open(f"{output_prefix.rstrip('/')}/{DECK_FILE}", "w", auto_mkdir=True) as out:
            out.write(fleet_deck_html(provision, status, links))
    except Exception as err:  # noqa: BLE001 - the Deck is a view; the task's outcome does not depend on it
        log.warning("data service %s: cannot write its Deck to %s: %s", provision.name, output_prefix, err)


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
