package proxy

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUpstreamSocketsDetectDeadPeers checks the options that cut a
// connection to a vanished host: TCP_USER_TIMEOUT and keepalive.
func TestUpstreamSocketsDetectDeadPeers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := typedDialer(time.Second)(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var userTimeout, keepalive, idle int
	_ = raw.Control(func(fd uintptr) {
		userTimeout, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
		keepalive, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		idle, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
	})
	if userTimeout != int(deadPeerTimeout.Milliseconds()) || keepalive != 1 || idle != 5 {
		t.Errorf("TCP_USER_TIMEOUT %dms, SO_KEEPALIVE %d, TCP_KEEPIDLE %ds; want %v, 1, 5s", userTimeout, keepalive, idle, deadPeerTimeout)
	}
}
