// Package ext holds the (empty) extensions Traefik's dynamic configuration
// embeds inline; open-source Traefik adds nothing to them.
package ext

// HTTP is inlined into dynamic.HTTPConfiguration.
type HTTP struct{}

// Router is inlined into dynamic.Router.
type Router struct{}
