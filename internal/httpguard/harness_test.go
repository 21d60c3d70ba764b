package httpguard

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"time"
)

// fakeConn serves a byte stream in pieces of the given sizes (cycled) and
// records what is written to it. It lets the parser and the conn's buffer
// handling be driven without a network.
type fakeConn struct {
	data    []byte
	pieces  []int
	i       int
	written bytes.Buffer
	closed  bool
}

func (f *fakeConn) Read(b []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, io.EOF
	}
	n := len(f.data)
	if len(f.pieces) > 0 {
		n = max(f.pieces[f.i%len(f.pieces)], 1)
		f.i++
	}
	n = min(n, len(b), len(f.data))
	copy(b, f.data[:n])
	f.data = f.data[n:]
	return n, nil
}

func (f *fakeConn) Write(b []byte) (int, error)      { return f.written.Write(b) }
func (f *fakeConn) Close() error                     { f.closed = true; return nil }
func (f *fakeConn) CloseWrite() error                { return nil }
func (f *fakeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (f *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (f *fakeConn) SetDeadline(time.Time) error      { return nil }
func (f *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (f *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// guardRun is what a guarded connection made of a stream.
type guardRun struct {
	released []byte // bytes Read returned
	written  []byte // what the guard wrote to the client
	err      error  // the error that ended reading
	requests int    // request heads released
	viol     *violation
	pass     bool // switched to pass-through
}

// runGuard reads a guarded fakeConn to the end: the stream arrives in
// pieces of the sizes in pieces, and is read with buffers of the sizes in
// reads (both cycled; empty means whole).
func runGuard(stream []byte, maxHead int, pieces, reads []int) guardRun {
	return runGuardServer(stream, maxHead, pieces, reads, false)
}

// runGuardServer is runGuard; with declining, the guard is told about
// connection states (ConnState) by a server that answers every Upgrade
// and CONNECT without taking the connection over.
func runGuardServer(stream []byte, maxHead int, pieces, reads []int, declining bool) guardRun {
	fc := &fakeConn{data: stream, pieces: pieces}
	l := Listen(nil, Options{MaxHeaderBytes: maxHead}).(*listener)
	c := &conn{Conn: fc, l: l, p: parser{maxHead: l.maxHead}}
	if declining {
		ConnState(c, http.StateNew)
	}
	var out bytes.Buffer
	buf := make([]byte, 64<<10)
	var run guardRun
	for i := 0; ; i++ {
		size := 4096
		if len(reads) > 0 {
			size = max(reads[i%len(reads)], 1)
		}
		if declining && c.p.st == stAwait {
			for c.idles.Load() < int64(c.p.awaitReq) {
				ConnState(c, http.StateIdle)
			}
		}
		n, err := c.Read(buf[:size])
		out.Write(buf[:n])
		if err != nil {
			run.err = err
			break
		}
		if n == 0 && i > 10*len(stream)+100 {
			run.err = errors.New("no progress")
			break
		}
	}
	_ = c.Close()
	run.released = out.Bytes()
	run.written = fc.written.Bytes()
	run.requests = c.p.requests
	run.viol = c.p.viol
	run.pass = c.p.st == stPass
	return run
}
