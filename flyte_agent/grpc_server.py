"""Options for the gRPC server `pyflyte serve connector` builds, which flytekit does not expose.

flytekit 1.16 (`flytekit/clis/sdk_in_container/serve.py` `_start_grpc_server`) calls
`grpc.aio.server(...)` without options and `add_insecure_port(...)`. `install()` wraps that factory
before the server starts (`flyte_agent.serve`, imported through `--modules`), so the connector's
server:

- ages out client connections (`grpc.max_connection_age_ms`): propeller dials `dns:///` with
  round robin and re-resolves only when a connection closes, so without an age a replica added by
  the HPA or a rollout never gets calls (gRPC A9, "Server-side Connection Management");
- serves TLS from a mounted `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) when one is set,
  instead of plaintext.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

AGE_OPTION = "grpc.max_connection_age_ms"
GRACE_OPTION = "grpc.max_connection_age_grace_ms"
# Calls in flight when the age is reached get this long to finish (propeller's deadlines are <= 10 m).
GRACE_SECONDS = 30.0


def server_options(max_connection_age_seconds: float) -> list[tuple[str, int]]:
    return [(AGE_OPTION, int(max_connection_age_seconds * 1000)), (GRACE_OPTION, int(GRACE_SECONDS * 1000))]


def tls_credentials(tls_dir: Path) -> grpc.ServerCredentials:
    key, cert = (tls_dir / "tls.key").read_bytes(), (tls_dir / "tls.crt").read_bytes()
    return grpc.ssl_server_credentials([(key, cert)])


def install(max_connection_age_seconds: float, tls_dir: Path | None) -> None:
    """Make every `grpc.aio.server` of this process age connections out and, with `tls_dir`, serve TLS."""
    original = getattr(grpc.aio.server, "__wrapped__", grpc.aio.server)
    credentials = tls_credentials(tls_dir) if tls_dir is not None else None

    def server(*args: Any, **kwargs: Any) -> grpc.aio.Server:
        options = [*(kwargs.pop("options", None) or ()), *server_options(max_connection_age_seconds)]
        made = original(*args, options=options, **kwargs)
        if credentials is not None:
            secure = made.add_secure_port
            made.add_insecure_port = lambda address: secure(address, credentials)  # type: ignore[method-assign]
        return made

    server.__wrapped__ = original  # type: ignore[attr-defined]
    grpc.aio.server = server
