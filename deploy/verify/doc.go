// Package verify checks the deployment files of deploy/ without a Docker
// engine or a cluster: the Dockerfile (parsed with BuildKit's parser), the
// compose stack (loaded with compose-go, as docker compose loads it) and the
// Kubernetes manifests of deploy/k8s (rendered with the kustomize API and
// decoded strictly into the Kubernetes types), each held to the rules of
// docs/deployment.md. It has no code of its own, only tests, and is a module
// of its own so that the txpipe module does not depend on kustomize,
// compose-go or BuildKit: run it with
//
//	cd deploy/verify && go test ./...
package verify
