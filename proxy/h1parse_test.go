package proxy

import (
	"bufio"
	"bytes"
	"maps"
	"net/http"
	"slices"
	"testing"
)

// requestSeeds are heads the loop parses and heads it must leave to
// net/http.
var requestSeeds = []string{
	"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /a%20b?x=1&y=%2F HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
	"HEAD /h HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
	"GET /?  HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /p?q#f HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX y: z\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n",
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
	"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET /é HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX:   spaced  \t\r\n\r\n",
}

// checkRequestHead fails t when parseRequestHead accepts raw but net/http
// reads it differently, or refuses it.
func checkRequestHead(t *testing.T, raw []byte) {
	end := bytes.Index(raw, crlfcrlf)
	if end < 0 {
		return
	}
	raw = raw[:end+4]
	got, ok := parseRequestHead(raw, "1.2.3.4:5")
	if !ok {
		return // net/http's to serve or refuse
	}
	want, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatalf("loop parsed %q, net/http refuses it: %v", raw, err)
	}
	switch {
	case got.Method != want.Method, got.RequestURI != want.RequestURI, got.Host != want.Host,
		got.Proto != want.Proto, got.Close != want.Close, got.ContentLength != want.ContentLength:
		t.Fatalf("%q: loop read %s %s %s host=%q close=%t len=%d, net/http %s %s %s host=%q close=%t len=%d", raw,
			got.Method, got.RequestURI, got.Proto, got.Host, got.Close, got.ContentLength,
			want.Method, want.RequestURI, want.Proto, want.Host, want.Close, want.ContentLength)
	case got.URL.String() != want.URL.String(), got.URL.EscapedPath() != want.URL.EscapedPath(),
		got.URL.RawQuery != want.URL.RawQuery, got.URL.ForceQuery != want.URL.ForceQuery:
		t.Fatalf("%q: loop URL %#v, net/http %#v", raw, *got.URL, *want.URL)
	case !maps.EqualFunc(got.Header, want.Header, slices.Equal):
		t.Fatalf("%q: loop header %v, net/http %v", raw, got.Header, want.Header)
	}
}

func TestRequestHeadMatchesNetHTTP(t *testing.T) {
	parsed := 0
	for _, s := range requestSeeds {
		checkRequestHead(t, []byte(s))
		if _, ok := parseRequestHead([]byte(s), ""); ok {
			parsed++
		}
	}
	if parsed < 5 {
		t.Errorf("only %d seeds parsed by the loop: the test compares too little", parsed)
	}
}

func FuzzRequestHead(f *testing.F) {
	for _, s := range requestSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(checkRequestHead)
}

var responseSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
	"HTTP/1.1 200\r\nContent-Length: 0\r\nX: a\r\nx: b\r\n\r\n",
	"HTTP/1.1 404 Not Here\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
	"HTTP/1.1 204 No Content\r\n\r\n",
	"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
	"HTTP/1.1 999 Odd\r\nContent-Length: 1\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: a\r\n b\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length:  7 \r\n\r\n",
}

// checkResponseHead fails t when parseSimpleResponse accepts raw but
// net/http reads it differently, or refuses it.
func checkResponseHead(t *testing.T, raw []byte, head bool) {
	end := bytes.Index(raw, crlfcrlf)
	if end < 0 {
		return
	}
	raw = raw[:end+4]
	method := http.MethodGet
	if head {
		method = http.MethodHead
	}
	req := &http.Request{Method: method}
	got, clen, ok := parseSimpleResponse(raw, req)
	if !ok {
		return // net/http's reader takes it
	}
	want, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), req)
	if err != nil {
		t.Fatalf("h1Client parsed %q, net/http refuses it: %v", raw, err)
	}
	switch {
	case got.StatusCode != want.StatusCode, got.Status != want.Status, got.Proto != want.Proto,
		got.Close != want.Close, clen != want.ContentLength:
		t.Fatalf("%q: h1Client read %q %s close=%t len=%d, net/http %q %s close=%t len=%d", raw,
			got.Status, got.Proto, got.Close, clen, want.Status, want.Proto, want.Close, want.ContentLength)
	case !maps.EqualFunc(got.Header, want.Header, slices.Equal):
		t.Fatalf("%q: h1Client header %v, net/http %v", raw, got.Header, want.Header)
	}
}

func TestResponseHeadMatchesNetHTTP(t *testing.T) {
	parsed := 0
	for _, s := range responseSeeds {
		checkResponseHead(t, []byte(s), false)
		checkResponseHead(t, []byte(s), true)
		if _, _, ok := parseSimpleResponse([]byte(s), &http.Request{Method: "GET"}); ok {
			parsed++
		}
	}
	if parsed < 3 {
		t.Errorf("only %d seeds parsed by h1Client: the test compares too little", parsed)
	}
}

func FuzzResponseHead(f *testing.F) {
	for _, s := range responseSeeds {
		f.Add([]byte(s), false)
	}
	f.Fuzz(checkResponseHead)
}
