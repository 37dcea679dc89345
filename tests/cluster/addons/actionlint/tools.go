//go:build tools

// Keeps actionlint's command in this module's build list (go mod tidy).
package tools

import _ "github.com/rhysd/actionlint/cmd/actionlint"
