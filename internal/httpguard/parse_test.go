package httpguard

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"testing"
)

// chunkings are the ways a stream is cut up on the wire and read: whole,
// a byte at a time, odd sizes, and net/http's 1-byte background reads.
var chunkings = []struct {
	name          string
	pieces, reads []int
}{
	{"whole", nil, nil},
	{"1-byte pieces", []int{1}, nil},
	{"1-byte reads", nil, []int{1}},
	{"odd pieces and reads", []int{3, 17, 1, 250}, []int{7, 4096, 1, 600}},
	{"large pieces small reads", []int{5000}, []int{513, 100}},
}

const (
	get1 = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
	post = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
	// smuggled is a body that would be a refused head if it were one.
	smuggled = "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\nX: \x00\n\r\n\r\n"
	// chunked carries a chunk extension and a trailer.
	chunked = "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n" +
		"5;name=val\r\nhello\r\n6 \r\n world\r\n0\r\nX-T: t\r\n\r\n"
)

func TestParserPassesValidStreams(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stream   string
		requests int
		pass     bool
	}{
		{"get", get1, 1, false},
		{"content-length body", post, 1, false},
		{"chunked with extension and trailer", chunked, 1, false},
		{"pipelined", get1 + post + chunked + get1, 4, false},
		{"body that looks like a request", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(smuggled)) + "\r\n\r\n" + smuggled, 1, false},
		{"chunked no trailer", "POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: Chunked\r\n\r\n1\r\na\r\n0\r\n\r\n" + get1, 2, false},
		{"big chunk hex", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000010\r\n0123456789abcdef\r\n0\r\n\r\n", 1, false},
		{"leading CRLF after POST", post + "\r\n" + get1, 2, false},
		{"four CR/LF after POST", post + "\r\n\n\r" + get1, 2, false},
		{"http/1.0", "GET / HTTP/1.0\r\n\r\n", 1, false},
		{"zero content-length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" + get1, 2, false},
		{"leading zeros in content-length", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 003\r\n\r\nabc", 1, false},
		{"ows and obs-text in values", "GET / HTTP/1.1\r\nHost: x\r\nX-A: \t a b\xff \t\r\nX-Empty:\r\n\r\n", 1, false},
		{"upgrade passes the rest", "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n" +
			"\x81\x05hello GET / HTTP/1.1\nX: \x00\r\n\r\n", 1, true},
		{"connect passes the rest", "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n\x16\x03\x01garbage\n\n", 1, true},
		{"h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00", 1, true},
		{"tls record", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 0, true},
	} {
		for _, ch := range chunkings {
			t.Run(tc.name+"/"+ch.name, func(t *testing.T) {
				run := runGuard([]byte(tc.stream), 0, ch.pieces, ch.reads)
				if run.err != io.EOF || run.viol != nil {
					t.Fatalf("ended with %v, violation %v", run.err, run.viol)
				}
				if !bytes.Equal(run.released, []byte(tc.stream)) {
					t.Errorf("released %q, want the stream unchanged", run.released)
				}
				if run.requests != tc.requests || run.pass != tc.pass {
					t.Errorf("requests %d pass %v, want %d %v", run.requests, run.pass, tc.requests, tc.pass)
				}
				if len(run.written) != 0 {
					t.Errorf("wrote %q", run.written)
				}
			})
		}
	}
}

// refusedHeads are smuggling vectors and malformed heads, each with the
// status the guard answers when it is the first request.
var refusedHeads = []struct {
	name   string
	head   string
	status int
	reason string
}{
	{"CL then TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", 400, "content-length with transfer-encoding"},
	{"TE then CL", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG", 400, "content-length with transfer-encoding"},
	{"obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400, "obs-fold"},
	{"obs-fold hiding TE", "POST / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc", 400, "obs-fold"},
	{"fold as first field", "GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400, "obs-fold"},
	{"TE gzip", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "unsupported transfer-encoding"},
	{"TE gzip, chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "unsupported transfer-encoding"},
	{"TE chunked, chunked", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 501, "unsupported transfer-encoding"},
	{"TE quoted", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400, "invalid transfer-encoding"},
	{"TE vertical tab", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\x0b\r\n\r\n", 400, "invalid header value"},
	{"TE empty", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n", 400, "invalid transfer-encoding"},
	{"two TE fields", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "multiple transfer-encoding"},
	{"TE in http/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "transfer-encoding in http/1.0"},
	{"two equal CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400, "multiple content-length"},
	{"two different CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\nhello!", 400, "multiple content-length"},
	{"CL list", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello", 400, "invalid content-length"},
	{"CL plus sign", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400, "invalid content-length"},
	{"CL negative", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "invalid content-length"},
	{"CL empty", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", 400, "invalid content-length"},
	{"CL overflow", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775808\r\n\r\n", 400, "invalid content-length"},
	{"bare LF everywhere", "GET / HTTP/1.1\nHost: x\n\n", 400, "bare lf"},
	{"bare LF ending head", "GET / HTTP/1.1\r\nHost: x\r\n\n", 400, "bare lf"},
	{"bare LF hiding a field", "GET / HTTP/1.1\r\nX-A: a\nTransfer-Encoding: chunked\r\nHost: x\r\n\r\n", 400, "bare lf"},
	{"NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400, "invalid header value"},
	{"CR in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400, "invalid header value"},
	{"DEL in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n", 400, "invalid header value"},
	{"space in name", "GET / HTTP/1.1\r\nHost: x\r\nX A: a\r\n\r\n", 400, "invalid header name"},
	{"space before colon", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", 400, "invalid header name"},
	{"empty name", "GET / HTTP/1.1\r\nHost: x\r\n: a\r\n\r\n", 400, "invalid header name"},
	{"no colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n", 400, "invalid header name"},
	{"non-ascii name", "GET / HTTP/1.1\r\nHost: x\r\nX-\xc3\xa9: a\r\n\r\n", 400, "invalid header name"},
	{"double space in request line", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request line"},
	{"NUL in target", "GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request line"},
	{"CR in request line", "GET /\r HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request line"},
	{"http/0.9", "GET /\r\n\r\n", 400, "malformed request line"},
	{"leading CRLF on a new connection", "\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed request line"},
	{"lower-case version", "GET / http/1.1\r\nHost: x\r\n\r\n", 400, "malformed request line"},
	{"garbage", "\x15\x03\x01\x02\x00garbage\r\n\r\n", 400, "malformed request line"},
	{"http/1.2", "GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505, "unsupported http version"},
	{"http/2.0 not PRI", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, "unsupported http version"},
	{"PRI with fields", "PRI * HTTP/2.0\r\nHost: x\r\n\r\n", 505, "unsupported http version"},
	{"head too large", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 5000) + "\r\n\r\n", 431, "head too large"},
	{"head too large, no line end", "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 5000), 431, "head too large"},
}

func TestParserRefusesFirstHead(t *testing.T) {
	for _, tc := range refusedHeads {
		for _, ch := range chunkings {
			t.Run(tc.name+"/"+ch.name, func(t *testing.T) {
				run := runGuard([]byte(tc.head), 4096, ch.pieces, ch.reads)
				if len(run.released) != 0 {
					t.Errorf("released %q", run.released)
				}
				if run.err != io.EOF {
					t.Errorf("read ended with %v, want EOF", run.err)
				}
				if run.viol == nil || run.viol.reason != tc.reason {
					t.Fatalf("violation %v, want %q", run.viol, tc.reason)
				}
				want := string(response(tc.status, tc.reason, ""))
				if string(run.written) != want {
					t.Errorf("wrote %q, want %q", run.written, want)
				}
			})
		}
	}
}

func TestParserRefusesPipelinedHead(t *testing.T) {
	for _, tc := range refusedHeads {
		t.Run(tc.name, func(t *testing.T) {
			stream := post + chunked + get1 + tc.head
			run := runGuard([]byte(stream), 4096, []int{10}, nil)
			if want := post + chunked + get1 + substitute; string(run.released) != want {
				t.Errorf("released %q, want %q", run.released, want)
			}
			if len(run.written) != 0 {
				t.Errorf("wrote %q; a response may be pending", run.written)
			}
			if run.viol == nil || run.viol.reason != tc.reason || run.requests != 3 {
				t.Errorf("violation %v after %d requests, want %q after 3", run.viol, run.requests, tc.reason)
			}
		})
	}
}

func TestParserRefusesBadChunkedBody(t *testing.T) {
	const h = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
	for _, tc := range []struct {
		name, body, released, reason string
	}{
		{"bare LF after size", "5\nhello\r\n0\r\n\r\n", "5", "malformed chunked body"},
		{"bare LF after data", "5\r\nhello\n0\r\n\r\n", "5\r\nhello", "malformed chunked body"},
		{"data longer than size", "5\r\nhello!\r\n0\r\n\r\n", "5\r\nhello", "malformed chunked body"},
		{"no digits", ";x\r\n", "", "malformed chunked body"},
		{"0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", "0", "malformed chunked body"},
		{"space before ext", "5 ;x\r\nhello\r\n0\r\n\r\n", "5 ", "malformed chunked body"},
		{"17 digits", "00000000000000005\r\nhello\r\n0\r\n\r\n", "0000000000000000", "malformed chunked body"},
		{"CR in ext", "5;a\rb\r\nhello\r\n0\r\n\r\n", "5;a\r", "malformed chunked body"},
		{"NUL in ext", "5;a\x00\r\nhello\r\n0\r\n\r\n", "5;a", "malformed chunked body"},
		{"chunk line too long", "5;" + strings.Repeat("e", 4094) + "\r\nhello\r\n0\r\n\r\n", "5;" + strings.Repeat("e", 4093), "malformed chunked body"},
		{"obs-fold in trailer", "0\r\nX-T: a\r\n b\r\n\r\n", "0\r\n", "malformed trailer"},
		{"bare LF in trailer", "0\r\nX-T: a\n\r\n", "0\r\n", "malformed trailer"},
		{"bad trailer name", "0\r\nX T: a\r\n\r\n", "0\r\n", "malformed trailer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := runGuard([]byte(h+tc.body+get1), 4096, nil, nil)
			if want := h + tc.released; string(run.released) != want {
				t.Errorf("released %q, want %q", run.released, want)
			}
			if run.err != errRefused || run.viol == nil || run.viol.reason != tc.reason {
				t.Errorf("ended with %v, violation %v, want %v and %q", run.err, run.viol, errRefused, tc.reason)
			}
			if len(run.written) != 0 {
				t.Errorf("wrote %q inside a request", run.written)
			}
		})
	}
}

func TestParseLength(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0", 0, true},
		{"9223372036854775807", 1<<63 - 1, true},
		{"9223372036854775808", 0, false},
		{"18446744073709551616", 0, false},
		{"99999999999999999999999", 0, false},
		{"", 0, false},
		{"1a", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, ok := parseLength([]byte(tc.in))
			if got != tc.want || ok != tc.ok {
				t.Errorf("parseLength(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestValidBytes(t *testing.T) {
	for c := 0; c < 256; c++ {
		for _, pos := range []int{0, 3, 7, 8, 15, 20} {
			v := []byte(strings.Repeat("a", 21))
			v[pos] = byte(c)
			if got, want := validBytes(v, &valueByte), valueByte[c]; got != want {
				t.Errorf("value byte %#x at %d: %v, want %v", c, pos, got, want)
			}
			if got, want := validBytes(v, &targetByte), targetByte[c]; got != want {
				t.Errorf("target byte %#x at %d: %v, want %v", c, pos, got, want)
			}
		}
	}
}
