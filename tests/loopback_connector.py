"""`pyflyte serve connector` bound to 127.0.0.1 instead of every interface: for tests and benchmarks on
a shared machine (run as `python -m tests.loopback_connector PORT PROMETHEUS_PORT`). The served code
is pyflyte's own, started with the connector's own `SERVE_MODULES`; only the addresses change, through
public names: `grpc.aio.server` (which pyflyte's serve command calls) and prometheus_client's `addr`.
"""

from __future__ import annotations

import functools
import sys
from typing import Any


def serve_on_loopback(port: int, prometheus_port: int) -> None:
    import grpc
    import prometheus_client
    from flytekit.clis.sdk_in_container.pyflyte import main

    from infra.contract import SERVE_MODULES

    make_server = grpc.aio.server

    def loopback_server(*args: Any, **kwargs: Any) -> Any:
        server = make_server(*args, **kwargs)
        bind = server.add_insecure_port
        server.add_insecure_port = lambda address: bind(address.replace("[::]", "127.0.0.1"))  # type: ignore[method-assign]
        return server

    grpc.aio.server = loopback_server
    prometheus_client.start_http_server = functools.partial(prometheus_client.start_http_server,
                                                            addr="127.0.0.1")
    main(["serve", "connector", "--port", str(port), "--prometheus_port", str(prometheus_port),
          *SERVE_MODULES])


if __name__ == "__main__":
    serve_on_loopback(int(sys.argv[1]), int(sys.argv[2]))
