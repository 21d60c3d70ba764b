package proxy

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// deadPeerControl sets TCP_USER_TIMEOUT on upstream sockets: data (or a
// keepalive probe) left unacknowledged that long closes the connection. A
// live instance's kernel acknowledges at once even while its app is slow,
// so only a vanished host is cut: a request waiting on it fails after
// about d instead of the response-header timeout, and is retried elsewhere
// when that is safe.
func deadPeerControl(d time.Duration) func(network, address string, c syscall.RawConn) error {
	ms := int(d.Milliseconds())
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
		})
		if err != nil {
			return err
		}
		return serr
	}
}
