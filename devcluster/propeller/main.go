// flytepropeller with only the plugins nim-agent needs.
//
// Upstream's cmd/controller/main.go blank-imports flytepropeller/plugins, which links every
// plugin (Spark, Ray, Dask, Kubeflow, AWS Batch, Athena, BigQuery, Databricks, Snowflake, echo).
// The command package alone already links, through the task node handler, the connector web-API
// plugin (registered by the handler at setup, not by an init function: the "connector-service"
// plugin id), the deprecated "agent-service" plugin, and the pod plugin (container, sidecar and
// pod task types) plus the K8S-ARRAY map plugin, which the array node handler needs. The pod
// import below is therefore redundant but states what this binary relies on.
package main

import (
	"github.com/flyteorg/flyte/flytepropeller/cmd/controller/cmd"

	_ "github.com/flyteorg/flyte/flyteplugins/go/tasks/plugins/k8s/pod"
	_ "github.com/flyteorg/flyte/flyteplugins/go/tasks/plugins/webapi/connector"
)

func main() {
	cmd.Execute()
}
