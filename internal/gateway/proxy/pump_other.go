//go:build !linux

package proxy

import "net"

// pump copies src to dst until src ends, through a buffer (only Linux
// splices between sockets).
func (c *pconn) pump(dst, src net.Conn) error {
	return c.bufferedPump(dst, src)
}
