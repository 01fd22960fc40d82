"""The real-engine tools are what tools/ pins: each built binary reports the pinned version, the pins
agree with each other and with requirements.lock, and `make tools` is what builds them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.control_plane import CRDS_DIR, REPO, REQUIRE_TOOLS_ENV, needs_tools, require_tools, tool
from tests.pulumi_engine import locked

TOOLS = REPO / "tools"


def pinned(module_dir: str, module: str) -> str:
    """The version `module` is required at in tools/<module_dir>/go.mod (`v` prefix kept)."""
    text = (TOOLS / module_dir / "go.mod").read_text()
    found = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)", text, re.M)
    assert found, f"{module} is not required in tools/{module_dir}/go.mod"
    return found.group(1)


def replaces(module_dir: str) -> dict[str, str]:
    text = (TOOLS / module_dir / "go.mod").read_text()
    return dict(re.findall(r"^\s*(\S+) => \1 (v\S+)$", text, re.M))


def version_output(name: str, *args: str) -> str:
    require_tools(name)
    return subprocess.run([str(tool(name)), *args], capture_output=True, text=True, timeout=60,
                          check=True).stdout


def semver(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.lstrip("v").split("-")[0].split("."))


def test_staging_modules_are_pinned_to_the_kubernetes_patch() -> None:
    # k8s.io/kubernetes v1.X.Y is built from staging modules at v0.X.Y: a half-done bump mixes them.
    kube = semver(pinned("kube", "k8s.io/kubernetes"))
    staging = replaces("kube")
    assert len(staging) >= 25, staging
    expected = f"v0.{kube[1]}.{kube[2]}"
    assert {m: v for m, v in staging.items() if v != expected} == {}
    assert kube[:2] == (1, 33), "the stacks render for Kubernetes 1.33 (infra/k8s_schema.py)"


def test_etcd_replaces_match_the_etcd_server_version() -> None:
    server = pinned("etcd", "go.etcd.io/etcd/server/v3")
    mismatched = {m: v for m, v in replaces("etcd").items()
                  if v != server and v != server.replace("v3.", "v2.30")}
    assert mismatched == {}


def test_pulumi_cli_pin_is_the_nearest_servable_release_to_the_lock() -> None:
    # The CLI should equal the lock's SDK (3.272.0); the module proxy here does not serve
    # pkg/v3 v3.272.0 or v3.273.0, so the pin is the next release and never older than the SDK.
    cli, sdk = semver(pinned("pulumi", "github.com/pulumi/pulumi/pkg/v3")), semver(locked("pulumi"))
    assert cli[0] == sdk[0] and cli >= sdk
    assert cli[1] - sdk[1] <= 2, "the CLI drifted from the lock's SDK: bump one of them"
    sdk_replace = replaces("pulumi")["github.com/pulumi/pulumi/sdk/v3"]
    assert sdk_replace == pinned("pulumi", "github.com/pulumi/pulumi/pkg/v3")


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_tools(n))
                                  for n in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")])
def test_kubernetes_binaries_report_the_pinned_version(name: str) -> None:
    assert version_output(name, "--version").split() == ["Kubernetes", pinned("kube", "k8s.io/kubernetes")]


@needs_tools("etcd")
def test_etcd_reports_the_pinned_version() -> None:
    out = version_output("etcd", "--version")
    assert f"etcd Version: {pinned('etcd', 'go.etcd.io/etcd/server/v3').lstrip('v')}" in out.splitlines()


@needs_tools("kwok")
def test_kwok_reports_the_pinned_version() -> None:
    assert pinned("kube", "sigs.k8s.io/kwok").lstrip("v") in version_output("kwok", "--version")


@needs_tools("pulumi")
def test_pulumi_cli_reports_the_pinned_version() -> None:
    assert version_output("pulumi", "version").strip() == pinned("pulumi", "github.com/pulumi/pulumi/pkg/v3")


def test_the_language_host_is_built_against_the_clis_pkg_and_sdk() -> None:
    cli = pinned("pulumi", "github.com/pulumi/pulumi/pkg/v3")
    for module in ("github.com/pulumi/pulumi/pkg/v3", "github.com/pulumi/pulumi/sdk/v3"):
        assert pinned("pulumi-language-python", module) == cli, module
    assert replaces("pulumi-language-python")["github.com/pulumi/pulumi/sdk/v3"] == cli


def test_the_provider_pin_is_the_locks_pulumi_kubernetes() -> None:
    # The CLI runs only a provider of exactly the SDK's version: a bump of one is a bump of both.
    provider = pinned("pulumi-kubernetes", "github.com/pulumi/pulumi-kubernetes/provider/v4")
    assert provider.lstrip("v") == locked("pulumi-kubernetes")


@needs_tools("pulumi-language-python")
def test_the_language_host_reports_the_pinned_version() -> None:
    host = "github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3"
    pin = pinned("pulumi-language-python", host)
    assert version_output("pulumi-language-python", "-version").strip() == pin
    assert tool("pulumi-language-python-exec").exists()


FLYTE_MODULES = ("flytepropeller", "flyteplugins", "flyteidl", "flytestdlib")


def test_flyte_modules_are_pinned_to_one_tag_and_replaced_to_the_copies() -> None:
    # Built from one flyteorg/flyte tag's trees (tools/build.sh copies them to .tools/src/flyte): a bump
    # of propeller alone would mix trees of two tags.
    propeller = pinned("flytepropeller", "github.com/flyteorg/flyte/flytepropeller")
    assert {m: pinned("flytepropeller", f"github.com/flyteorg/flyte/{m}") for m in FLYTE_MODULES} == {
        m: propeller for m in FLYTE_MODULES}
    text = (TOOLS / "flytepropeller" / "go.mod").read_text()
    for m in FLYTE_MODULES:
        assert f"github.com/flyteorg/flyte/{m} => ../../.tools/src/flyte/{m}\n" in text, m
    # The refused dependency of the Spark plugin (left out of the build) is the empty stub.
    assert "github.com/kubeflow/spark-operator => ./spark-operator-stub\n" in text
    assert not list((TOOLS / "flytepropeller" / "spark-operator-stub").glob("*.go"))


@needs_tools("flytepropeller")
def test_flytepropeller_reports_the_pinned_version() -> None:
    # Propeller has no version subcommand: it logs flytestdlib/version's build information at every
    # start (to stderr), before cobra prints the help.
    require_tools("flytepropeller")
    out = subprocess.run([str(tool("flytepropeller")), "--help"], capture_output=True, text=True, timeout=60,
                         check=True)
    found = re.search(r"App \[flytepropeller\], Version \[([^\]]*)\]", out.stderr)
    assert found, out.stderr
    assert found.group(1) == pinned("flytepropeller", "github.com/flyteorg/flyte/flytepropeller")
    assert "Usage:" in out.stdout


@pytest.mark.integration
def test_the_installed_provider_plugin_reports_the_locked_version() -> None:
    """The plugin `make tools` installed answers GetPluginInfo with the lock's version (stamped at build)."""
    import grpc
    from google.protobuf import empty_pb2
    from pulumi.runtime.proto import provider_pb2_grpc

    from tests.pulumi_engine import provider_plugin, require_engine

    require_engine()
    # Its one argument is the engine's address, which it health-checks only every 5 minutes.
    with subprocess.Popen([str(provider_plugin()), "127.0.0.1:1"], stdout=subprocess.PIPE, text=True) as p:
        try:
            assert p.stdout is not None
            port = int(p.stdout.readline().strip())
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = provider_pb2_grpc.ResourceProviderStub(channel)
                info = stub.GetPluginInfo(empty_pb2.Empty(), timeout=30)
            assert info.version == locked("pulumi-kubernetes")
        finally:
            p.kill()


def test_make_tools_builds_each_tool_from_its_pinned_module() -> None:
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "pulumi",
             "pulumi-language-python", "flytepropeller")
    targets = [f".tools/bin/{n}" for n in names] + [".tools/provider/pulumi-resource-kubernetes"]
    dry = subprocess.run(["make", "-n", "-B", *targets], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True).stdout
    for name in (*names, "pulumi-resource-kubernetes"):
        assert f"tools/build.sh {name}" in dry, name
    # ... and `make tools` (TOOL_BINS) builds every one of them.
    dry_tools = subprocess.run(["make", "-n", "-B", "tools"], cwd=REPO, capture_output=True, text=True,
                               timeout=60, check=True).stdout
    assert sorted(re.findall(r"^tools/build\.sh (\S+)$", dry_tools, re.M)) == sorted(
        (*names, "pulumi-resource-kubernetes"))


@pytest.mark.skipif(shutil.which("go") is None and not os.environ.get(REQUIRE_TOOLS_ENV),
                    reason="no `go` on PATH (needed by `make tools` too)")
def test_vendored_crds_equal_the_pinned_module_zips() -> None:
    # infra/crds is the one copy (schema validation and the control plane both use it); here each
    # file is compared with the file in its project's Go module zip, and the zip's hash with the
    # go.sum line SOURCES.yaml records (`go mod download` checks it against the checksum database).
    from infra.k8s_schema import crd_sources

    differ = []
    for project in crd_sources().values():
        out = subprocess.run(["go", "mod", "download", "-json", f"{project['module']}@{project['version']}"],
                             cwd="/", capture_output=True, text=True, timeout=300, check=True).stdout
        info = json.loads(out)
        assert info["Sum"] == project["go_sum"], project["module"]
        differ += [name for name, entry in project["files"].items()
                   if (CRDS_DIR / name).read_bytes() != (Path(info["Dir"]) / entry["path"]).read_bytes()]
    assert differ == []


@pytest.mark.parametrize(("name", "instead"), [
    ("pulumi-language-python", "carries pulumi-language-python and pulumi-language-python-exec"),
    ("pulumi-resource-kubernetes",
     f"pulumi plugin install resource kubernetes v{locked('pulumi-kubernetes')}"),
    ("flytepropeller", "/bin/flytepropeller of flyte's image"),
])
def test_without_the_upstream_sources_make_tools_says_what_to_install_instead(
        tmp_path: Path, name: str, instead: str) -> None:
    # A user's machine without ../shared/src (one that reaches GitHub and Pulumi's downloads).
    result = subprocess.run([str(TOOLS / "build.sh"), name], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "GRAPHFLEET_SHARED_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "is missing (the upstream source the Go module proxy refuses)" in result.stderr
    assert instead in result.stderr
