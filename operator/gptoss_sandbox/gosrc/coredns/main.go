// Command coredns is CoreDNS with only the plugins the real node's cluster DNS
// uses. CoreDNS's own main links every plugin it ships (clouds, tracing,
// metrics); this one links five, so it builds in a fraction of the time.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order in which the plugins see a query: the order of CoreDNS's
// plugin.cfg, restricted to the plugins above.
var directives = []string{"bind", "ready", "errors", "cache", "kubernetes"}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
