//go:build !linux

package proxy

import (
	"syscall"
	"time"
)

// deadPeerControl is a no-op where TCP_USER_TIMEOUT does not exist; TCP
// keepalive alone then notices a vanished host.
func deadPeerControl(time.Duration) func(network, address string, c syscall.RawConn) error {
	return nil
}
