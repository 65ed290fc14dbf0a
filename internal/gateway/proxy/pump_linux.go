package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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

// splicePump waits, without holding budget, until src has data queued,
// reserves budget for at most what is queued, and splices that much: the
// step does not wait for more data, so budget is held only while bytes
// move and every step is accounted (and its events sent) as soon as it
// ends. As a safety net a step whose source stalls for holdTimeout ends
// and gives the rest of its reservation back.
func (c *pconn) splicePump(dst, src *net.TCPConn) error {
	rc, err := src.SyscallConn()
	if err != nil {
		return err
	}
	for {
		queued, err := c.waitReadable(src, rc)
		if err != nil {
			return err
		}
		if queued == 0 {
			return closeWrite(dst) // end of stream
		}
		n, err := c.s.reserve(c.ctx, min(int64(queued), c.s.chunk))
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
			// src stalled: the reservation is back; wait for data again.
		default:
			return err
		}
	}
}

// waitReadable blocks until src has bytes queued (it returns how many) or
// has reached its end (0), fails, or the connection goes idle. It consumes
// nothing.
func (c *pconn) waitReadable(src *net.TCPConn, rc syscall.RawConn) (int, error) {
	for {
		if err := c.setIdleReadDeadline(src); err != nil {
			return 0, err
		}
		var queued int
		var sockErr error
		err := rc.Read(func(fd uintptr) bool {
			if v, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil && v > 0 {
				queued = v
				return true
			}
			var b [1]byte
			n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			for err == unix.EINTR {
				n, _, err = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			}
			switch {
			case err == unix.EAGAIN:
				return false // nothing yet: wait for the poller
			case err != nil:
				sockErr = err
			default:
				queued = n // 0 at the end of the stream
			}
			return true
		})
		switch {
		case err == nil && sockErr != nil:
			return 0, os.NewSyscallError("recvfrom", sockErr)
		case err == nil:
			return queued, nil
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return 0, err
		}
	}
}
