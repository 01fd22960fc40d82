"""Why the graph-engine servers export no request counts or latency (issue 11 item "metrics"): DeepGNN's
server is its C++ library, started by one C call whose arguments carry no hook (no interceptor, no
callback, no metrics option). If a DeepGNN release adds one, this test fails and the statement in
docs/operators.md ("Metrics") must be revisited."""

from __future__ import annotations

import inspect

from deepgnn.graph_engine.snark import server


def test_deepgnn_server_offers_no_request_hook() -> None:
    params = set(inspect.signature(server.Server.__init__).parameters) - {"self"}
    assert params == {"meta_path", "partitions", "hostname", "ssl_config", "storage_type", "config_path",
                      "stream", "skip_feature_loading", "skip_temporal_loading"}, params
    # Its only calls into the library start and stop the server, and nothing is handed a callback
    # the library could call per request.
    calls = {name for name in ("StartServer", "ResetServer", "CreateRemoteClient")
             if f"lib.{name}(" in inspect.getsource(server)}
    assert calls == {"StartServer", "ResetServer"}
    assert "CFUNCTYPE" not in inspect.getsource(server)  # no callback the library could call per request
