//go:build tools

// Package tools pins the flannel module so `go mod tidy` keeps it; the binary itself is
// built with `go build github.com/flannel-io/flannel`.
package tools

import _ "github.com/flannel-io/flannel"
