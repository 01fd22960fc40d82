#!/usr/bin/env bash
# Builds one tool from its pinned Go module under tools/ into .tools/ (`make tools` calls it once
# per binary). Versions live only in tools/*/go.mod; the version each binary
# reports is stamped from there, and tests/test_tools.py checks it. The Python language host and the
# kubernetes provider come from the upstream trees in ../shared/src (the Go module proxy refuses both;
# ../shared/src/README.md), through a `replace` in their module here; so does Flyte's propeller (the proxy
# serves no github.com/flyteorg/flyte/* module).
# Niced, one binary per call, stripped: the machines have 2 cores shared with other work.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/.tools/bin
mkdir -p "$bin" "$root/.tools/provider"

shared=${GRAPHFLEET_SHARED_DIR:-$root/../shared}

version() { (cd "$root/tools/$1" && go list -m -f '{{.Version}}' "$2"); }
module_dir() { (cd "$root/tools/$1" && go list -m -f '{{.Dir}}' "$2"); }
# The upstream tree a tool is built from; on a machine without ../shared/src (one that reaches GitHub
# and Pulumi's downloads) the same pieces come prebuilt, as the message says.
need_source() {  # tree what-to-do-instead
    if [ ! -d "$shared/src/$1" ]; then
        echo "tools/build.sh: $shared/src/$1 is missing (the upstream source the Go module proxy refuses)." >&2
        echo "Without it, install the same piece prebuilt: $2" >&2
        exit 1
    fi
}
build() {  # module-dir package output extra-ldflags
    (cd "$root/tools/$1" && nice -n 10 go build -trimpath -ldflags="-s -w $4" -o "$bin/$3.tmp" "$2")
    mv "$bin/$3.tmp" "$bin/$3"
}

case "$1" in
kube-apiserver | kube-controller-manager | kube-scheduler)
    v=$(version kube k8s.io/kubernetes)  # v1.MINOR.PATCH
    minor=${v#v1.}; minor=${minor%%.*}
    build kube "k8s.io/kubernetes/cmd/$1" "$1" "-X k8s.io/component-base/version.gitVersion=$v \
        -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
        -X k8s.io/component-base/version.gitTreeState=clean"
    ;;
kwok)
    v=$(version kube sigs.k8s.io/kwok)
    build kube sigs.k8s.io/kwok/cmd/kwok kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=${v#v}"
    ;;
etcd)
    build etcd go.etcd.io/etcd/server/v3 etcd ""
    ;;
pulumi)
    # CGO off, as in pulumi's release builds: the CLI then resolves the current user in pure Go (no
    # libc NSS), which the self-managed state backend's lock depends on.
    export CGO_ENABLED=0
    v=$(version pulumi github.com/pulumi/pulumi/pkg/v3)
    build pulumi github.com/pulumi/pulumi/pkg/v3/cmd/pulumi pulumi \
        "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$v"
    ;;
pulumi-language-python)
    # Built against pkg/sdk at the CLI's version (tests/test_tools.py holds the two pins equal), with
    # the `pulumi-language-python-exec` script it runs beside it, from the sdk/v3 module zip. The CLI
    # finds both next to its own binary.
    need_source pulumi-v3.259.0/sdk/python/cmd/pulumi-language-python \
        "the pulumi CLI release tarball of the pinned version carries pulumi-language-python and pulumi-language-python-exec; put them in $bin"
    export CGO_ENABLED=0
    v=$(version pulumi-language-python github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3)
    build pulumi-language-python github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3 \
        pulumi-language-python "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$v"
    install -m 0755 "$(module_dir pulumi-language-python github.com/pulumi/pulumi/sdk/v3)/python/cmd/pulumi-language-python-exec" \
        "$bin/pulumi-language-python-exec"
    ;;
pulumi-resource-kubernetes)
    # The provider's module (tools/pulumi-kubernetes/go.mod) replaces it with a writable copy of the
    # upstream tree, completed with the two generated files its binary embeds: the schema comes from
    # the one provider version the proxy serves (its pseudo-version, tag v4.25.0; only GetSchema reads
    # it, not up/preview/destroy), stamped with our version by upstream's own generate.go.
    need_source pulumi-kubernetes-v4.32.0/provider \
        "PULUMI_HOME=$root/.tools/pulumi-home pulumi plugin install resource kubernetes v4.32.0"
    need_source pulumi-v3.243.0/pkg "PULUMI_HOME=$root/.tools/pulumi-home pulumi plugin install resource kubernetes v4.32.0"
    v=$(cd "$root/tools/pulumi-kubernetes" && sed -n 's,^require github.com/pulumi/pulumi-kubernetes/provider/v4 v,,p' go.mod)
    src=$root/.tools/src/pulumi-kubernetes
    rm -rf "$src" && mkdir -p "$src"
    cp -r "$shared/src/pulumi-kubernetes-v$v/provider" "$src/provider" && chmod -R u+w "$src"
    schema_module=$(sed -n 's,^// schema: ,,p' "$root/tools/pulumi-kubernetes/go.mod")
    schema_dir=$(cd "$root/.tools" && go mod download -json "$schema_module" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    cmd=$src/provider/cmd/pulumi-resource-kubernetes
    install -m 0644 "$schema_dir/cmd/pulumi-resource-kubernetes/schema.json" "$cmd/schema.json"
    (cd "$root/tools/pulumi-kubernetes" && nice -n 10 go build -o "$src/generate-embeds" "$cmd/generate.go")
    (cd "$cmd" && VERSION=$v "$src/generate-embeds")
    build pulumi-kubernetes github.com/pulumi/pulumi-kubernetes/provider/v4/cmd/pulumi-resource-kubernetes \
        ../provider/pulumi-resource-kubernetes "-X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=$v"
    # Installed as a plugin in the tests' own PULUMI_HOME: nothing is downloaded, and ~/.pulumi is untouched.
    rm -rf "$root/.tools/pulumi-home/plugins/resource-kubernetes-v$v"
    PULUMI_HOME=$root/.tools/pulumi-home "$bin/pulumi" plugin install resource kubernetes "v$v" \
        --file "$root/.tools/provider/pulumi-resource-kubernetes"
    ;;
flytepropeller)
    # Flyte's propeller, from the four upstream trees of ../shared/src/flyte-v<version> (the proxy serves
    # no github.com/flyteorg/flyte/* module), copied (writable) to .tools/src/flyte, where
    # tools/flytepropeller/go.mod replaces each module. The Spark plugin is left out of the plugin
    # loader: its one dependency (kubeflow/spark-operator) is refused, and an empty module stands in.
    v=$(cd "$root/tools/flytepropeller" && sed -n 's,^require github.com/flyteorg/flyte/flytepropeller ,,p' go.mod)
    for tree in flytepropeller flyteplugins flyteidl flytestdlib; do
        need_source "flyte-$v/$tree" "/bin/flytepropeller of flyte's image cr.flyte.org/flyteorg/flytepropeller:$v,\
 copied to $bin (it reports version \"unknown\": that image's build stamps none); or, to build it here, the\
 flytepropeller, flyteplugins, flyteidl and flytestdlib folders of flyteorg/flyte at tag $v (git clone --depth 1\
 -b $v https://github.com/flyteorg/flyte) copied into $shared/src/flyte-$v"
    done
    src=$root/.tools/src/flyte
    rm -rf "$src" && mkdir -p "$src"
    for tree in flytepropeller flyteplugins flyteidl flytestdlib; do
        cp -r "$shared/src/flyte-$v/$tree" "$src/$tree"
    done
    chmod -R u+w "$src"
    loader=$src/flytepropeller/plugins/loader.go
    spark='_ "github.com/flyteorg/flyte/flyteplugins/go/tasks/plugins/k8s/spark"'
    if [ "$(grep -cxF "	$spark" "$loader")" != 1 ]; then
        echo "tools/build.sh: $loader no longer has the one line \`$spark\` to leave the Spark plugin out;" >&2
        echo "check how flytepropeller $v loads its plugins and update this step." >&2
        exit 1
    fi
    grep -vxF "	$spark" "$loader" >"$loader.tmp" && mv "$loader.tmp" "$loader"
    # The snapshot in ../shared/src leaves out test code, flyteplugins/tests included; one file outside
    # a _test.go, the array plugin's array_tests_base.go (RunArrayTestsEndToEnd, called only by tests),
    # imports that package: it goes from the copy too.
    if [ ! -d "$src/flyteplugins/tests" ]; then
        rm "$src/flyteplugins/go/tasks/plugins/array/array_tests_base.go"
    fi
    # No cgo, as in flyte's release image (flytepropeller/Makefile, linux_compile). The controller logs
    # this version at start (`App [flytepropeller], Version [...]`).
    export CGO_ENABLED=0
    build flytepropeller github.com/flyteorg/flyte/flytepropeller/cmd/controller flytepropeller \
        "-X github.com/flyteorg/flyte/flytestdlib/version.Version=$v"
    ;;
*)
    echo "unknown tool: $1" >&2; exit 2
    ;;
esac
