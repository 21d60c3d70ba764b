package proxy

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// Go's HTTP/2 server, left alone, fails five cases of h2spec (the HTTP/2
// conformance suite) that HAProxy passes: it answers a request carrying a
// connection-specific field or a TE other than "trailers" with a 400
// instead of refusing the stream, lets a request whose DATA does not add up
// to its content-length reach the handler as a body error, hangs up on a
// SETTINGS frame that repeats a setting (RFC 9113 says to apply them in
// order), and advertises a 1 MiB SETTINGS_MAX_FRAME_SIZE, which makes a
// HEADERS frame over the protocol's 16 KiB default legal. h2check fixes the
// first four in front of the server: it reads the client's frames before Go
// does, decodes every header block with an HPACK decoder of its own (kept
// in step with the server's, as it sees the same blocks in the same order),
// merges repeated settings into their last value, and cuts the connection
// on a malformed request (RFC 9113 section 5.4.1 lets a stream error be
// treated as a connection error) before the server sees it. NewServer
// advertises 16 KiB frames for the fifth.

// configureH2Check makes srv serve HTTP/2 (TLS by ALPN, and cleartext with
// prior knowledge) with golang.org/x/net/http2's server behind h2check.
// The server takes its settings from srv.HTTP2.
func configureH2Check(srv *http.Server) error {
	tlsConfig := srv.TLSConfig
	h2s := &http2.Server{}
	if err := http2.ConfigureServer(srv, h2s); err != nil {
		return err
	}
	srv.TLSConfig = tlsConfig // a nil one marks a cleartext listener; ALPN is set by the caller
	serve := func(hs *http.Server, c net.Conn, h http.Handler, sawPreface bool) {
		var ctx context.Context
		if bc, ok := h.(interface{ BaseContext() context.Context }); ok {
			ctx = bc.BaseContext()
		}
		h2s.ServeConn(newH2Check(c, sawPreface), &http2.ServeConnOpts{
			Context: ctx, Handler: h, BaseConfig: hs, SawClientPreface: sawPreface,
		})
	}
	srv.TLSNextProto["h2"] = func(hs *http.Server, c *tls.Conn, h http.Handler) {
		serve(hs, c, h, false)
	}
	srv.TLSNextProto["unencrypted_http2"] = func(hs *http.Server, c *tls.Conn, h http.Handler) {
		// net/http hands a cleartext connection over wrapped in a *tls.Conn
		// that never did TLS, the preface already read.
		nc, ok := c.NetConn().(interface{ UnencryptedNetConn() net.Conn })
		if !ok {
			c.Close()
			return
		}
		serve(hs, nc.UnencryptedNetConn(), h, true)
	}
	return nil
}

const (
	h2FrameHeaderLen = 9
	h2MaxCheckedLen  = 16 << 10 // frames up to the default max size are checked
	h2MaxStreams     = 4096     // streams tracked for content-length at once
	h2Preface        = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

var errH2Malformed = errors.New("proxy: malformed HTTP/2 request: connection closed (RFC 9113 section 8.1.1)")

// h2check is a client connection whose frames are checked before the
// HTTP/2 server reads them.
type h2check struct {
	net.Conn
	preface bool   // the client preface is behind us
	buf     []byte // what raw reads into
	raw     []byte // read from the client, not yet checked
	ready   []byte // checked, for the server (a window on buf when it can)
	pass    bool   // stop checking: forward the rest as is
	err     error

	dec       *hpack.Decoder
	block     []byte // the header block being assembled
	held      []byte // its HEADERS and CONTINUATION frames, held back
	blockID   uint32
	blockEnd  bool // its HEADERS frame ended the stream
	malformed bool // a field of the block makes the request malformed
	declared  int64

	streams map[uint32]*h2Body

	lingering atomic.Bool // cut: linger closes the connection
}

// h2Body is what h2check knows of a request body: the declared length (-1:
// none) and the DATA received.
type h2Body struct{ declared, got int64 }

func newH2Check(c net.Conn, sawPreface bool) *h2check {
	h := &h2check{Conn: c, preface: sawPreface, streams: make(map[uint32]*h2Body)}
	h.dec = hpack.NewDecoder(4096, h.field)
	return h
}

func (h *h2check) Read(p []byte) (int, error) {
	for len(h.ready) == 0 {
		if h.err != nil {
			return 0, h.err
		}
		if h.pass && len(h.raw) > 0 {
			h.ready, h.raw = h.raw, nil
			break
		}
		if !h.pass && h.step() {
			continue
		}
		if err := h.fill(); err != nil {
			h.err = err
		}
	}
	n := copy(p, h.ready)
	h.ready = h.ready[n:]
	if len(h.ready) == 0 {
		h.ready = nil
	}
	return n, nil
}

// fill reads more from the client, into raw's spare room. It runs only
// when ready is empty, so nothing handed out still points into raw.
func (h *h2check) fill() error {
	if len(h.raw) == 0 {
		h.raw = h.buf[:0]
	}
	if cap(h.raw)-len(h.raw) < 4<<10 {
		b := make([]byte, len(h.raw), max(2*cap(h.raw), 32<<10))
		copy(b, h.raw)
		h.raw, h.buf = b, b
	}
	n, err := h.Conn.Read(h.raw[len(h.raw):cap(h.raw)])
	h.raw = h.raw[:len(h.raw)+n]
	if n > 0 {
		return nil
	}
	return err
}

// step checks the next whole frame in raw, if there is one, and reports
// whether it made progress.
func (h *h2check) step() bool {
	if !h.preface {
		if len(h.raw) < len(h2Preface) {
			return false
		}
		h.preface = true
		h.emit(len(h2Preface))
		return true
	}
	if len(h.raw) < h2FrameHeaderLen {
		return false
	}
	length := int(h.raw[0])<<16 | int(h.raw[1])<<8 | int(h.raw[2])
	if length > h2MaxCheckedLen {
		h.passThrough() // the server refuses it (FRAME_SIZE_ERROR)
		return true
	}
	if len(h.raw) < h2FrameHeaderLen+length {
		return false
	}
	typ, flags := http2.FrameType(h.raw[3]), http2.Flags(h.raw[4])
	id := binary.BigEndian.Uint32(h.raw[5:9]) & (1<<31 - 1)
	payload := h.raw[h2FrameHeaderLen : h2FrameHeaderLen+length]
	if h.held != nil && typ != http2.FrameContinuation {
		h.passThrough() // a header block cut by another frame: the server refuses it
		return true
	}
	switch typ {
	case http2.FrameSettings:
		if flags&http2.FlagSettingsAck == 0 && id == 0 && length%6 == 0 {
			h.settings(payload)
			return true
		}
	case http2.FrameHeaders:
		frag, ok := headerFragment(payload, flags)
		if !ok || id == 0 {
			h.passThrough()
			return true
		}
		h.blockID, h.blockEnd = id, flags&http2.FlagHeadersEndStream != 0
		h.block, h.malformed, h.declared = append(h.block[:0], frag...), false, -1
		h.hold(length, flags&http2.FlagHeadersEndHeaders != 0)
		return true
	case http2.FrameContinuation:
		if h.held == nil || id != h.blockID {
			h.passThrough()
			return true
		}
		h.block = append(h.block, payload...)
		h.hold(length, flags&http2.FlagContinuationEndHeaders != 0)
		return true
	case http2.FrameData:
		n, ok := dataLength(payload, flags)
		if ok && id != 0 {
			if st := h.streams[id]; st != nil {
				st.got += int64(n)
				end := flags&http2.FlagDataEndStream != 0
				if st.declared >= 0 && (st.got > st.declared || end && st.got != st.declared) {
					h.fail()
					return true
				}
				if end {
					delete(h.streams, id)
				}
			}
		}
	case http2.FrameRSTStream:
		delete(h.streams, id)
	}
	h.emit(h2FrameHeaderLen + length)
	return true
}

// emit moves the first n bytes of raw to ready, without a copy when
// ready is empty (step only runs then).
func (h *h2check) emit(n int) {
	if len(h.ready) == 0 {
		h.ready = h.raw[:n:n]
	} else {
		h.ready = append(h.ready, h.raw[:n]...)
	}
	h.raw = h.raw[n:]
}

// hold keeps a HEADERS or CONTINUATION frame back until its block is whole,
// then checks the block and lets its frames go, or cuts the connection.
func (h *h2check) hold(length int, endHeaders bool) {
	n := h2FrameHeaderLen + length
	h.held = append(h.held, h.raw[:n]...)
	h.raw = h.raw[n:]
	if !endHeaders {
		if len(h.held) > 1<<20 {
			h.passThrough() // the server's header list limit applies
		}
		return
	}
	if _, err := h.dec.Write(h.block); err != nil {
		h.passThrough() // the server fails it too: COMPRESSION_ERROR
		return
	}
	st := h.streams[h.blockID]
	trailers := st != nil
	if h.malformed && !trailers {
		h.fail()
		return
	}
	switch {
	case trailers && h.blockEnd:
		if st.declared >= 0 && st.got != st.declared {
			h.fail()
			return
		}
		delete(h.streams, h.blockID)
	case !trailers && !h.blockEnd && h.declared >= 0 && len(h.streams) < h2MaxStreams:
		h.streams[h.blockID] = &h2Body{declared: h.declared}
	case !trailers && h.blockEnd && h.declared > 0:
		h.fail() // a declared body that never comes
		return
	}
	if len(h.ready) == 0 {
		h.ready = h.held
	} else {
		h.ready = append(h.ready, h.held...)
	}
	h.held = nil
}

// field checks one decoded field of a header block.
func (h *h2check) field(f hpack.HeaderField) {
	name := f.Name
	switch {
	case strings.EqualFold(name, "connection"), strings.EqualFold(name, "keep-alive"),
		strings.EqualFold(name, "proxy-connection"), strings.EqualFold(name, "transfer-encoding"),
		strings.EqualFold(name, "upgrade"):
		h.malformed = true
	case strings.EqualFold(name, "te"):
		if f.Value != "trailers" {
			h.malformed = true
		}
	case strings.EqualFold(name, "content-length"):
		if n, err := strconv.ParseInt(f.Value, 10, 64); err == nil && n >= 0 {
			h.declared = n
		}
	}
}

// settings forwards a SETTINGS frame with each setting once, at its last
// value: applying them in order comes to the same.
func (h *h2check) settings(payload []byte) {
	n := len(payload) / 6
	last := make(map[uint16]int, n)
	for i := range n {
		last[binary.BigEndian.Uint16(payload[i*6:])] = i
	}
	if len(last) == n {
		h.emit(h2FrameHeaderLen + len(payload))
		return
	}
	out := make([]byte, h2FrameHeaderLen, h2FrameHeaderLen+6*len(last))
	copy(out, h.raw[:h2FrameHeaderLen])
	for i := range n {
		if last[binary.BigEndian.Uint16(payload[i*6:])] == i {
			out = append(out, payload[i*6:i*6+6]...)
		}
	}
	l := len(out) - h2FrameHeaderLen
	out[0], out[1], out[2] = byte(l>>16), byte(l>>8), byte(l)
	h.ready = append(h.ready, out...)
	h.raw = h.raw[h2FrameHeaderLen+len(payload):]
}

// passThrough stops checking: what is held and what follows goes to the
// server as is, which refuses the connection on its own.
func (h *h2check) passThrough() {
	h.pass = true
	h.ready = append(append(h.ready, h.held...), h.raw...)
	h.held, h.raw = nil, nil
}

// fail cuts the connection on a malformed request, before the server sees
// it: what was checked before still reaches the server, then the error.
func (h *h2check) fail() {
	h.err = errH2Malformed
	h.held, h.raw = nil, nil
	h.linger()
}

// h2LingerTimeout bounds how long a cut connection reads what its client
// still sends.
const h2LingerTimeout = time.Second

// linger cuts the connection without a reset, as nginx's lingering_close
// does: a FIN first, then what the client still sends (the rest of its
// request's DATA) is read and dropped until it closes too or
// h2LingerTimeout passes. A plain close with those bytes unread makes the
// kernel answer with an RST, which can reach the client before it read the
// close (h2spec's h2c run failed 1 in 4 that way: "connection reset by
// peer" where RFC 9113 wants a closed connection).
func (h *h2check) linger() {
	tc := tcpConn(h.Conn)
	if tc == nil || tc.CloseWrite() != nil {
		h.Conn.Close()
		return
	}
	h.lingering.Store(true)
	go func() {
		defer h.Conn.Close()
		tc.SetReadDeadline(time.Now().Add(h2LingerTimeout))
		io.Copy(io.Discard, tc)
	}()
}

// Close closes the connection, unless it lingers: linger closes it then.
func (h *h2check) Close() error {
	if h.lingering.Load() {
		return nil
	}
	return h.Conn.Close()
}

// headerFragment returns the header block fragment of a HEADERS payload.
func headerFragment(p []byte, flags http2.Flags) ([]byte, bool) {
	pad := 0
	if flags&http2.FlagHeadersPadded != 0 {
		if len(p) < 1 {
			return nil, false
		}
		pad, p = int(p[0]), p[1:]
	}
	if flags&http2.FlagHeadersPriority != 0 {
		if len(p) < 5 {
			return nil, false
		}
		p = p[5:]
	}
	if pad > len(p) {
		return nil, false
	}
	return p[:len(p)-pad], true
}

// dataLength returns the body bytes of a DATA payload (padding excluded).
func dataLength(p []byte, flags http2.Flags) (int, bool) {
	if flags&http2.FlagDataPadded == 0 {
		return len(p), true
	}
	if len(p) < 1 || int(p[0]) > len(p)-1 {
		return 0, false
	}
	return len(p) - 1 - int(p[0]), true
}
