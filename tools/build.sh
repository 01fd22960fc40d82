#!/usr/bin/env bash
# Builds one tool from its pinned Go module under tools/ into .tools/ (`make tools` calls it once
# per binary). Versions live only in tools/*/go.mod; the version each binary
# reports is stamped from there, and tests/test_tools.py checks it.
# Niced, one binary per call, stripped: the machines have 2 cores shared with other work.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/.tools/bin
mkdir -p "$bin"

version() { (cd "$root/tools/$1" && go list -m -f '{{.Version}}' "$2"); }
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
    # libc NSS), which the self-managed backend's lock depends on.
    export CGO_ENABLED=0
    v=$(version pulumi github.com/pulumi/pulumi/pkg/v3)
    build pulumi github.com/pulumi/pulumi/pkg/v3/cmd/pulumi pulumi \
        "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$v"
    ;;
*)
    echo "unknown tool: $1" >&2; exit 2
    ;;
esac
