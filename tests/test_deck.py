"""The servers table (GetTask's custom_info, the Decks) and the training Deck: plain functions."""

from __future__ import annotations

import base64
from pathlib import Path

from flyte_agent import deck
from flyte_agent.provisioner import ServerPhase, ServerState
from infra.spec import DataServiceSpec

SPEC = DataServiceSpec(graph_uri="s3://graphs/x", partitions=5, replicas=2)


def test_server_rows_show_partitions_phase_restarts_and_age() -> None:
    servers = [ServerState(0, "h:1", ServerPhase.SERVING, started_at=100.0),
               ServerState(1, "h:2", ServerPhase.RESTARTING, restarts=2, reason="OOMKilled")]
    rows = deck.server_rows(SPEC, servers, now=160.0)
    # Ordinal i holds partitions i, i+S, ... (the servers' --server_group rule).
    assert [r["partitions"] for r in rows] == [[0, 2, 4], [1, 3]]
    assert rows[0]["age_seconds"] == 60 and rows[1]["age_seconds"] is None
    assert (rows[1]["phase"], rows[1]["restarts"], rows[1]["last_exit"]) == ("restarting", 2, "OOMKilled")
    assert deck.custom_info(SPEC, []) is None


def test_fleet_deck_marks_servers_not_serving() -> None:
    page = deck.fleet_html(["h:1", "h:2"], 3, not_serving=["h:2"])
    assert "2 graph-engine servers, 3 partitions" in page
    assert "<td>h:1</td><td>0, 2</td><td>SERVING</td>" in page and "<td>h:2</td><td>1</td><td>no</td>" in page


def test_training_deck_inlines_the_curves_and_escapes_the_report(tmp_path: Path) -> None:
    png = tmp_path / "curves.png"
    png.write_bytes(b"\x89PNG fake")
    page = deck.training_html({"dataset": "<cora>", "test_accuracy": 0.81234567}, png)
    assert base64.b64encode(b"\x89PNG fake").decode() in page
    assert "&lt;cora&gt;" in page and "<td>0.8123</td>" in page
    assert "<img" not in deck.training_html({"dataset": "cora"}, None)


def test_the_data_service_deck_is_written_where_propeller_looks_and_never_fails_the_task(
        tmp_path: Path, monkeypatch) -> None:
    from flyteidl.core.execution_pb2 import TaskLog

    from flyte_agent.provisioner import Phase, Provision, Status

    provision = Provision(name="gf-x", spec=SPEC, owner="p/d", execution="p/d/r/n0", created_at=0.0)
    status = Status(Phase.FAILED, ["h:1", "h:2"], message="server 1 <exited>",
                    servers=[ServerState(0, "h:1", ServerPhase.SERVING),
                             ServerState(1, "h:2", ServerPhase.FAILED, restarts=5, reason="exit code 1")])
    links = [TaskLog(uri="file:///logs/server-1.log", name="server 1 (h:2)")]
    prefix = tmp_path / "outputs" / "n0"
    deck.write_fleet_deck(str(prefix), provision, status, links)
    page = (prefix / deck.DECK_FILE).read_text()  # flyteplugins ioutils/paths.go: <output_prefix>/deck.html
    assert "data service gf-x: failed, 2 server(s), 5 partitions" in page
    assert "<td>1</td><td>h:2</td><td>1, 3</td><td>failed</td><td>5</td><td>exit code 1</td>" in page
    assert "server 1 &lt;exited&gt;" in page and 'href="file:///logs/server-1.log"' in page
    # No write access (here: the prefix is a file): logged, not raised; no prefix (local runs): nothing.
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    warned: list[str] = []
    monkeypatch.setattr(deck.log, "warning", lambda text, *args: warned.append(text % args))
    deck.write_fleet_deck(str(blocked), provision, status)
    assert len(warned) == 1 and "cannot write its Deck" in warned[0]
    deck.write_fleet_deck("", provision, status)
