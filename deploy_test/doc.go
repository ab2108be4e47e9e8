// Package deploytest checks the deployment artifacts, not the service: the
// kustomize base in ../k8s/base and ../docker-compose.yml. Its tests render and
// load them offline, decode every object strictly into its Kubernetes API
// type, assert the properties the manifests promise (selectors, probes,
// shutdown timing against the app's own configuration, least privilege),
// and run kube-score over them.
//
// It is a module of its own so that kustomize, kube-score and compose-go
// never enter the service's go.mod. The trade-off: after the service's
// go.mod changes a dependency this module shares, run `go mod tidy` here.
package deploytest
