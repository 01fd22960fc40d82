// Flyte's propeller (flytepropeller, from flytepropeller/cmd/controller). The Go module proxy serves
// no github.com/flyteorg/flyte/* module, so tools/build.sh builds it from the upstream trees in
// ../shared/src/flyte-v<version> (flyteorg/flyte at the tag; ../shared/src/README.md), copied
// (writable) to .tools/src/flyte: propeller, and the three modules it replaces to (`../x`).
// Replaced, as ../shared/src/README.md found:
// - the four flyte modules: the upstream trees' replaces among themselves, which a main module does
//   not inherit, restated to the copies (all four at propeller's tag);
// - amazon-sagemaker-operator-for-k8s: propeller's own replace;
// - kubeflow/spark-operator: flyteplugins' pseudo-version is refused; only the Spark plugin imports
//   it, which tools/build.sh deletes from flytepropeller/plugins/loader.go in the copy (propeller
//   then has no `spark` task plugin): an empty module stands in (spark-operator-stub/).
module graphfleet.local/tools/flytepropeller

go 1.26.0

require github.com/flyteorg/flyte/flytepropeller v1.16.8

require (
	github.com/flyteorg/flyte/flyteidl v1.16.8 // indirect
	github.com/flyteorg/flyte/flyteplugins v1.16.8 // indirect
	github.com/flyteorg/flyte/flytestdlib v1.16.8 // indirect
)

replace (
	github.com/aws/amazon-sagemaker-operator-for-k8s => github.com/aws/amazon-sagemaker-operator-for-k8s v1.0.1-0.20210303003444-0fb33b1fd49d
	github.com/flyteorg/flyte/flyteidl => ../../.tools/src/flyte/flyteidl
	github.com/flyteorg/flyte/flyteplugins => ../../.tools/src/flyte/flyteplugins
	github.com/flyteorg/flyte/flytepropeller => ../../.tools/src/flyte/flytepropeller
	github.com/flyteorg/flyte/flytestdlib => ../../.tools/src/flyte/flytestdlib
	github.com/kubeflow/spark-operator => ./spark-operator-stub
)
