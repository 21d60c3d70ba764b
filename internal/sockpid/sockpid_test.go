package sockpid

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

func TestPIDOfPortThisProcess(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	pid, err := PIDOfPort(port)
	if err != nil {
		t.Fatalf("PIDOfPort(%d): %v", port, err)
	}
	if pid != os.Getpid() {
		t.Fatalf("PIDOfPort(%d) = %d, want this process %d", port, pid, os.Getpid())
	}
}

func TestPIDOfPortIPv6(t *testing.T) {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatalf("no IPv6 loopback: %v", err)
	}
	defer l.Close()
	pid, err := PIDOfPort(l.Addr().(*net.TCPAddr).Port)
	if err != nil || pid != os.Getpid() {
		t.Fatalf("PIDOfPort over IPv6 = %d, %v; want %d", pid, err, os.Getpid())
	}
}

func TestPIDOfPortChild(t *testing.T) {
	// A real other process: python's http.server would do, but nc-like
	// behaviour from the test binary itself keeps it dependency-free.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(os.Args[0], "-test.run=TestHelperListen", "--")
	cmd.Env = append(os.Environ(), "SOCKPID_HELPER_PORT="+strconv.Itoa(port))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pid, err := PIDOfPort(port)
		if err == nil {
			if pid != cmd.Process.Pid {
				t.Fatalf("PIDOfPort = %d, want child %d", pid, cmd.Process.Pid)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("child never seen listening: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHelperListen(t *testing.T) {
	port := os.Getenv("SOCKPID_HELPER_PORT")
	if port == "" {
		return // not the helper process
	}
	l, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		os.Exit(3)
	}
	defer l.Close()
	time.Sleep(30 * time.Second)
	os.Exit(0)
}

func TestPIDOfPortNotListening(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if _, err := PIDOfPort(port); !errors.Is(err, ErrNotListening) {
		t.Fatalf("PIDOfPort on a closed port: err = %v, want ErrNotListening", err)
	}
}
