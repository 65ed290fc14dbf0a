package wg

import "time"

// Watch has f see each packet at the gateway's meter: whether it comes
// from a peer and whether it passed.
func Watch(g *Gateway, f func(p []byte, fromPeer, passed bool)) {
	g.net.dev.Filter = func(p []byte, fromPeer bool) bool {
		ok := g.pass(p, fromPeer, time.Now())
		f(p, fromPeer, ok)
		return ok
	}
}
