// An empty stand-in for a module the Go module proxy refuses (403 at every version). Only the
// provider's code generator (cmd/pulumi-gen-kubernetes) imports it, never the provider binary we
// build, so no package of it is ever compiled; the module graph only needs its go.mod.
module github.com/pulumi/pulumi-dotnet/pulumi-language-dotnet/v3

go 1.21
