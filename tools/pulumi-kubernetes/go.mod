// The pulumi-kubernetes provider plugin (pulumi-resource-kubernetes), at the version of
// pulumi_kubernetes in requirements.lock (tests/test_tools.py holds them equal). The Go module proxy
// refuses provider/v4 at every tag, so tools/build.sh builds it from the upstream tree in
// ../shared/src, copied (writable) to .tools/src with the generated files its binary embeds.
// Replaced, as ../shared/src/README.md found:
// - pkg/v3 v3.243.0 (what the provider requires): its zip is refused; the upstream tree is in shared;
// - fluxcd/pkg/ssa: the provider's pseudo-version is refused; v0.72.0, tagged the same day, is served;
// - pulumi-language-dotnet: refused at every version and imported only by the code generator, never
//   by the provider binary: an empty module stands in (dotnet-stub/);
// - sdk/v4 and clipboard: the provider's own replaces, which a main module does not inherit.
// The schema the binary embeds (GetSchema only) comes from the one provider version the proxy serves:
// schema: github.com/pulumi/pulumi-kubernetes/provider/v4@v4.0.0-20260115033456-f47bc2d6f199
module graphfleet.local/tools/pulumi-kubernetes

go 1.26.6

require github.com/pulumi/pulumi-kubernetes/provider/v4 v4.32.0

require github.com/pulumi/pulumi/pkg/v3 v3.243.0 // indirect

replace (
	github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e
	github.com/fluxcd/pkg/ssa => github.com/fluxcd/pkg/ssa v0.72.0
	github.com/pulumi/pulumi-dotnet/pulumi-language-dotnet/v3 => ./dotnet-stub
	github.com/pulumi/pulumi-kubernetes/provider/v4 => ../../.tools/src/pulumi-kubernetes/provider
	github.com/pulumi/pulumi-kubernetes/sdk/v4 => github.com/pulumi/pulumi-kubernetes/sdk/v4 v4.32.0
	github.com/pulumi/pulumi/pkg/v3 => ../../../shared/src/pulumi-v3.243.0/pkg
)
