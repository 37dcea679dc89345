//go:build tools

// Package tools pins the command build-addons.sh compiles, so `go mod tidy`
// keeps its dependencies in go.mod/go.sum.
package tools

import _ "github.com/traefik/traefik/v3/cmd/traefik"
