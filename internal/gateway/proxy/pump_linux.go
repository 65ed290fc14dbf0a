package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// pump copies src to dst until src ends. Between two TCP connections it
// uses io.CopyN, which Go runs as splice(2); otherwise a buffer.
func (c *pconn) pump(dst, src net.Conn) error {
	d, ok1 := dst.(*net.TCPConn)
	s, ok2 := src.(*net.TCPConn)
	if !ok1 || !ok2 || c.p.cfg.noSplice {
		return c.bufferedPump(dst, src)
	}
	return c.splicePump(d, s)
}

// splicePump waits for src to have data without holding budget, reserves
// budget, and splices at most that much. If src pauses for holdTimeout the
// step ends and the unused reservation goes back.
func (c *pconn) splicePump(dst, src *net.TCPConn) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	for {
		if err := c.waitReadable(src, rc); err != nil {
			return err
		}
		n, err := c.s.reserve(c.ctx, c.s.chunk)
		if err != nil {
			return err
		}
		now := time.Now()
		wdl := now.Add(c.p.cfg.IdleTimeout)
		src.SetReadDeadline(now.Add(holdTimeout))
		dst.SetWriteDeadline(wdl)
		w, err := io.CopyN(dst, src, n)
		c.account(n, w)
		switch {
		case err == nil:
		case err == io.EOF:
			return closeWrite(dst)
		case errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(wdl):
			// src paused: the reservation is back; wait for data again.
		default:
			return err
		}
	}
}

// waitReadable blocks until src has data, an end of stream or an error to
// report, or the connection goes idle.
func (c *pconn) waitReadable(src *net.TCPConn, rc syscall.RawConn) error {
	for {
		if err := c.setIdleReadDeadline(src); err != nil {
			return err
		}
		err := rc.Read(peekReadable)
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
	}
}

// peekReadable reports whether fd has something for a read: data, an end
// of stream or an error. It consumes nothing.
func peekReadable(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err != syscall.EAGAIN
}
