"""The connector's gRPC server options (flyte_agent/grpc_server.py), on real loopback servers: client
connections age out so round robin reaches new replicas, and TLS replaces plaintext when set."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flyte_agent import grpc_server

WAIT_LIMIT = 30.0


@pytest.fixture
def restore_factory() -> Iterator[None]:
    original = grpc.aio.server
    yield
    grpc.aio.server = original


def _cert(tmp_path: Path) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "tls.crt").write_bytes(pem)
    (tmp_path / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return pem


async def _serve() -> tuple[grpc.aio.Server, int]:
    # As flytekit does: the factory without options, then add_insecure_port.
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def _check(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(reply.status)


def test_client_connections_age_out(restore_factory: None) -> None:
    grpc_server.install(max_connection_age_seconds=1, tls_dir=None)

    async def run() -> list[grpc.ChannelConnectivity]:
        server, port = await _serve()
        seen = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
            seen.append(channel.get_state())
            # The server's GOAWAY at the age closes the connection: the channel leaves READY by itself.
            try:
                await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY),
                                       WAIT_LIMIT)
            finally:
                seen.append(channel.get_state())
        await server.stop(None)
        return seen

    seen = asyncio.run(run())
    assert seen[0] == grpc.ChannelConnectivity.READY and seen[1] != grpc.ChannelConnectivity.READY


def test_tls_replaces_plaintext(tmp_path: Path, restore_factory: None) -> None:
    root = _cert(tmp_path)
    grpc_server.install(max_connection_age_seconds=300, tls_dir=tmp_path)

    async def run() -> tuple[int, grpc.StatusCode | None]:
        server, port = await _serve()
        credentials = grpc.ssl_channel_credentials(root_certificates=root)
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            status = await _check(channel)
        plain_error = None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                await _check(channel)
            except grpc.aio.AioRpcError as err:
                plain_error = err.code()
        await server.stop(None)
        return status, plain_error

    status, plain_error = asyncio.run(run())
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert plain_error == grpc.StatusCode.UNAVAILABLE
