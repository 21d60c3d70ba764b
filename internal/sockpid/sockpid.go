// Package sockpid finds the process that owns a listening TCP socket, the
// way `ss -ltnp` does: the socket's inode from /proc/net/tcp{,6}, then the
// process holding a file descriptor on "socket:[inode]". Linux only; it
// only reads /proc.
package sockpid

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNotListening is returned when no socket listens on the port.
var ErrNotListening = errors.New("no socket is listening on the port")

const tcpListen = "0A"

// ListeningInodes returns the inodes of TCP sockets in LISTEN state on port,
// over IPv4 and IPv6, read from procRoot (normally "/proc").
func ListeningInodes(procRoot string, port int) ([]uint64, error) {
	var inodes []uint64
	found := false
	for _, f := range []string{"net/tcp", "net/tcp6"} {
		ino, err := parseNetTCP(filepath.Join(procRoot, f), port)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		found = true
		inodes = append(inodes, ino...)
	}
	if !found {
		return nil, fmt.Errorf("reading %s/net/tcp: not available", procRoot)
	}
	return inodes, nil
}

func parseNetTCP(path string, port int) ([]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var inodes []uint64
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		if len(fields) < 10 || fields[3] != tcpListen {
			continue
		}
		i := strings.LastIndexByte(fields[1], ':')
		if i < 0 {
			continue
		}
		p, err := strconv.ParseUint(fields[1][i+1:], 16, 16)
		if err != nil || int(p) != port {
			continue
		}
		ino, err := strconv.ParseUint(fields[9], 10, 64)
		if err != nil || ino == 0 {
			continue
		}
		inodes = append(inodes, ino)
	}
	return inodes, sc.Err()
}

// PIDOfPort returns the PID of the process listening on TCP port. When
// several processes share the socket (a pre-forked server) it returns the
// lowest PID, normally the parent.
func PIDOfPort(port int) (int, error) {
	return pidOfPort("/proc", port)
}

func pidOfPort(procRoot string, port int) (int, error) {
	inodes, err := ListeningInodes(procRoot, port)
	if err != nil {
		return 0, err
	}
	if len(inodes) == 0 {
		return 0, fmt.Errorf("port %d: %w", port, ErrNotListening)
	}
	want := make(map[string]bool, len(inodes))
	for _, ino := range inodes {
		want["socket:["+strconv.FormatUint(ino, 10)+"]"] = true
	}
	procs, err := os.ReadDir(procRoot)
	if err != nil {
		return 0, err
	}
	best := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fdDir := filepath.Join(procRoot, p.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue // gone, or not ours to read
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			if err == nil && want[link] {
				if best == 0 || pid < best {
					best = pid
				}
				break
			}
		}
	}
	if best == 0 {
		return 0, fmt.Errorf("port %d is listening but no process we can read owns it (not root?)", port)
	}
	return best, nil
}
