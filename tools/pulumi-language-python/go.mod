// The Python language host (pulumi-language-python), which `pulumi up -s <datacenter>` runs our
// program with. The proxy refuses its module at every version, so it is built from the upstream tree
// in ../shared/src (tag v3.259.0, the newest in that snapshot) against pkg/sdk at the CLI's version
// (tools/pulumi/go.mod; tests/test_tools.py holds the pins equal). The CLI runs it from beside its
// own binary, with pulumi-language-python-exec from the sdk/v3 module zip.
module graphfleet.local/tools/pulumi-language-python

go 1.26.6

require (
	github.com/pulumi/pulumi/pkg/v3 v3.274.0
	github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3 v3.259.0
	github.com/pulumi/pulumi/sdk/v3 v3.274.0
)

replace (
	github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
	github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3 => ../../../shared/src/pulumi-v3.259.0/sdk/python/cmd/pulumi-language-python
	github.com/pulumi/pulumi/sdk/v3 => github.com/pulumi/pulumi/sdk/v3 v3.274.0
)
