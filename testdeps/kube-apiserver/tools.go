//go:build tools

// Package tools keeps k8s.io/kubernetes/cmd/kube-apiserver in the module graph for go mod tidy.
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
