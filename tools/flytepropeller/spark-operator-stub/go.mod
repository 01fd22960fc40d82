// An empty stand-in for a module the Go module proxy refuses: flyteplugins requires
// github.com/kubeflow/spark-operator at pseudo-version v0.0.0-20250325114751-1905be6e1dbd, which the
// proxy does not serve (and it lists no version). Only flyteplugins' Spark plugin imports it, and
// tools/build.sh leaves that plugin out of propeller's plugin loader, so no package of it is ever
// compiled; the module graph only needs its go.mod.
module github.com/kubeflow/spark-operator

go 1.21
