// Stand-in for Traefik's nested module github.com/traefik/traefik/dynamic/ext
// (an extension point for Traefik's own distributions), which the module proxy
// does not serve; see ../go.mod.
module github.com/traefik/traefik/dynamic/ext

go 1.24.0
