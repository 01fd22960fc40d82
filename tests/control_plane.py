"""A real Kubernetes control plane for the real-engine tests, run as plain processes on loopback.

etcd, kube-apiserver (RBAC authorization, the PodSecurity admission plugin, serving certificates made
here, a static admin token), kube-controller-manager (workloads create pods, which admission checks),
kube-scheduler (binds them) and kwok (simulated nodes whose pods turn Running and Ready: no kubelet,
no containers). The binaries come from `make tools` (.tools/, pinned in tools/); the CRDs are the
upstream files vendored in infra/crds/.

Without the tools a test marked `needs_tools` skips with "run `make tools`"; under `make test`
(GRAPHFLEET_REQUIRE_TOOLS=1) a missing tool fails instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO / ".tools" / "bin"
# The upstream CRDs we render for, vendored byte for byte from their Go module zips (issue 7).
CRDS_DIR = REPO / "infra" / "crds"
CONTROL_PLANE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
REQUIRE_TOOLS_ENV = "GRAPHFLEET_REQUIRE_TOOLS"
START_TIMEOUT_S = 90.0
# kwok manages only nodes carrying this annotation (its documented convention).
KWOK_NODE_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
ADMIN_USER = "graphfleet-admin"


def tool(name: str) -> Path:
    return TOOLS_BIN / name


def _missing_tools_reason(names: tuple[str, ...]) -> str:
    missing = [n for n in names if not tool(n).exists()]
    return f"missing {', '.join(missing)} in {TOOLS_BIN}: run `make tools`" if missing else ""


def needs_tools(*names: str) -> pytest.MarkDecorator:
    """Skip, with the reason, a test whose tools are missing, except under `make test`
    (GRAPHFLEET_REQUIRE_TOOLS=1): there the test runs and `require_tools` fails it."""
    reason = _missing_tools_reason(names)
    return pytest.mark.skipif(bool(reason) and not os.environ.get(REQUIRE_TOOLS_ENV), reason=reason or "-")


def require_tools(*names: str) -> None:
    """Fail when a tool is missing; outside `make test` the `needs_tools` marker skipped first."""
    reason = _missing_tools_reason(names)
    if reason:
        pytest.fail(reason + f" ({REQUIRE_TOOLS_ENV} is set: `make test` provides it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_certs(d: Path) -> None:
    """A CA, the apiserver's serving certificate (127.0.0.1) and the service-account signing key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem(k: rsa.RSAPrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption())

    now = datetime.datetime.now(datetime.UTC)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5),
             "not_valid_after": now + datetime.timedelta(days=1)}
    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "graphfleet-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = key()
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
              .issuer_name(ca_name).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
              .add_extension(x509.SubjectAlternativeName([
                  x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                  x509.DNSName("kubernetes.default.svc")]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    sa_key = key()
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(pem(server_key))
    (d / "sa.key").write_bytes(pem(sa_key))
    (d / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass
class ControlPlane:
    """A running control plane: its kubeconfig, and a small REST client acting as admin."""

    dir: Path
    server: str
    token: str
    kubeconfig: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _resources: dict[tuple[str, str], tuple[str, bool]] = field(default_factory=dict)

    # --- REST -------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, *, as_user: str | None = None,
                content_type: str = "application/json",
                params: Mapping[str, str] | None = None) -> requests.Response:
        """One API call as admin, or as `as_user` through impersonation (for a ServiceAccount's
        username the apiserver adds its groups, as for the account's own token)."""
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type}
        if as_user:
            headers["Impersonate-User"] = as_user
        return requests.request(method, self.server + path, headers=headers, params=params,
                                data=None if body is None else json.dumps(body),
                                verify=str(self.dir / "ca.crt"), timeout=30)

    def get(self, path: str, **kw: Any) -> Any:
        r = self.request("GET", path, **kw)
        r.raise_for_status()
        return r.json()

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind, from the server's discovery (no table of our own)."""
        key = (api_version, kind)
        if key not in self._resources:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            for r in self.get(base)["resources"]:
                if "/" not in r["name"]:
                    self._resources[(api_version, r["kind"])] = (r["name"], r["namespaced"])
        return self._resources[key]

    def path_of(self, manifest: Mapping[str, Any], namespace: str | None = None) -> str:
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        plural, namespaced = self.resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        ns = namespace or manifest["metadata"].get("namespace") or "default"
        prefix = f"{base}/namespaces/{ns}" if namespaced else base
        return f"{prefix}/{plural}/{manifest['metadata']['name']}"

    def apply(self, manifest: Mapping[str, Any], *, dry_run: bool = False, as_user: str | None = None,
              manager: str = "graphfleet-test", force: bool = True) -> requests.Response:
        """Server-side apply (creates or updates); the response keeps the server's warnings."""
        params = {"fieldManager": manager, "force": str(force).lower()}
        if dry_run:
            params["dryRun"] = "All"
        return self.request("PATCH", self.path_of(manifest), manifest, as_user=as_user, params=params,
                            content_type="application/apply-patch+yaml")

    def wait_for(self, what: str, predicate: Any, timeout: float = 60.0, interval: float = 0.25) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
            except requests.RequestException as e:
                last = e
            else:
                if last:
                    return last
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")

    def logs_tail(self, lines: int = 15) -> str:
        out = []
        for name in self.processes:
            log = self.dir / f"{name}.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name} (exit {self.processes[name].poll()}):\n" + "\n".join(tail))
        return "\n".join(out)

    # --- objects ----------------------------------------------------------------------------
    def add_node(self, name: str, labels: Mapping[str, str] | None = None, *,
                 cpu: str = "256", memory: str = "4Ti", extra: Mapping[str, str] | None = None) -> None:
        """A kwok-managed node (kwok makes it Ready and runs its pods' lifecycle), big enough for
        a whole fleet: the tests check admission and readiness, not bin packing."""
        capacity = {"cpu": cpu, "memory": memory, "ephemeral-storage": "100Ti", "pods": "110",
                    **(extra or {})}
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": dict(KWOK_NODE_ANNOTATION),
                             "labels": {"type": "kwok", "kubernetes.io/hostname": name, **(labels or {})}},
                "status": {"capacity": capacity, "allocatable": capacity}}
        r = self.request("POST", "/api/v1/nodes", node)
        if r.status_code not in (201, 409):
            raise RuntimeError(f"creating node {name}: {r.status_code} {r.text}")
        self.wait_for(f"node {name} Ready", lambda: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in self.get(f"/api/v1/nodes/{name}").get("status", {}).get("conditions", [])))

    def install_crds(self, directory: Path = CRDS_DIR) -> list[str]:
        names = []
        for f in sorted(directory.glob("*.yaml")):
            if f.name == "SOURCES.yaml":
                continue
            for crd in yaml.safe_load_all(f.read_text()):
                if not crd:
                    continue
                r = self.apply(crd)
                if r.status_code not in (200, 201):
                    raise RuntimeError(f"installing CRD {f.name}: {r.status_code} {r.text[:500]}")
                names.append(crd["metadata"]["name"])
        for n in names:
            self.wait_for(f"CRD {n} Established", lambda n=n: any(
                c["type"] == "Established" and c["status"] == "True" for c in self.get(
                    f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{n}").get("status", {})
                .get("conditions", [])))
        return names

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            p = self.processes[name]
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)


def start_control_plane(d: Path) -> ControlPlane:
    """Start everything and wait until the API serves, kcm made the default ServiceAccount and the
    CRDs are established. Raises (with the components' log tails) if that takes over a minute."""
    _write_certs(d)
    token = secrets.token_hex(16)
    (d / "tokens.csv").write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = d / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "graphfleet-test",
        "clusters": [{"name": "graphfleet-test",
                      "cluster": {"server": server, "certificate-authority": str(d / "ca.crt")}}],
        "users": [{"name": ADMIN_USER, "user": {"token": token}}],
        "contexts": [{"name": "graphfleet-test",
                      "context": {"cluster": "graphfleet-test", "user": ADMIN_USER}}],
    }))
    cp = ControlPlane(dir=d, server=server, token=token, kubeconfig=kubeconfig)
    env = {**os.environ, "HOME": str(d)}  # kwok reads ~/.kwok; keep everyone out of the real home

    def run(name: str, *args: str) -> None:
        log = open(d / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process at exit
        cp.processes[name] = subprocess.Popen([str(tool(name)), *args], stdout=log, stderr=subprocess.STDOUT,
                                              env=env, cwd=d, start_new_session=True)

    try:
        run("etcd", "--name=graphfleet", f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=graphfleet=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync", "--log-level=warn")
        run("kube-apiserver", f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--cert-dir={d}", f"--tls-cert-file={d / 'server.crt'}",
            f"--tls-private-key-file={d / 'server.key'}",
            f"--client-ca-file={d / 'ca.crt'}", f"--token-auth-file={d / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--enable-admission-plugins=PodSecurity",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16", "--profiling=false")
        cp.wait_for("kube-apiserver /readyz", lambda: cp.request("GET", "/readyz").status_code == 200,
                    timeout=START_TIMEOUT_S)
        common = [f"--kubeconfig={kubeconfig}", "--leader-elect=false"]
        run("kube-controller-manager", *common, "--secure-port=0",
            f"--service-account-private-key-file={d / 'sa.key'}", f"--root-ca-file={d / 'ca.crt'}",
            "--use-service-account-credentials=false")
        run("kube-scheduler", *common, "--secure-port=0")
        run("kwok", f"--kubeconfig={kubeconfig}", "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip=127.0.0.1", "--cidr=10.244.0.0/16", "--node-lease-duration-seconds=40")
        default_sa = "/api/v1/namespaces/default/serviceaccounts/default"
        cp.wait_for("the default ServiceAccount (kube-controller-manager running)",
                    lambda: cp.request("GET", default_sa).status_code == 200, timeout=START_TIMEOUT_S)
        cp.install_crds()
    except BaseException as e:
        cp.stop()
        raise RuntimeError(f"the control plane did not start: {e}\n{cp.logs_tail()}") from e
    return cp


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    require_tools(*CONTROL_PLANE_TOOLS)
    cp = start_control_plane(tmp_path_factory.mktemp("control-plane"))
    try:
        yield cp
    finally:
        cp.stop()
