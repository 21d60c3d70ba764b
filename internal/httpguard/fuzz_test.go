package httpguard

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// FuzzGuard feeds byte streams to a guarded connection (no network) and
// checks that the guard never panics or stalls, that its verdict does not
// depend on how the stream is cut up, that it only releases the stream's
// own bytes (plus the fixed substitute after a refused pipelined head),
// and that net/http reads what it releases as exactly the requests the
// guard counted, with the same boundaries, and with heads that pass an
// independent check for the smuggling vectors. Half the inputs run with a
// server that declines every Upgrade and CONNECT, so that the guard goes
// on checking after them.
func FuzzGuard(f *testing.F) {
	f.Add([]byte(get1+post+chunked), uint16(0x0301))
	f.Fuzz(func(t *testing.T, stream []byte, cut uint16) {
		wd := time.AfterFunc(10*time.Second, func() { panic(fmt.Sprintf("HANG cut=%d stream=%q", cut, stream)) })
		defer wd.Stop()
		maxHead := 128 + int(cut>>4)
		pieces := []int{int(cut&0x0f) + 1, int(cut>>8) + 1, 1}
		reads := []int{int(cut>>6)%700 + 1, 4096, 1}
		declining := cut&0x8000 != 0
		run := runGuardServer(stream, maxHead, pieces, reads, declining)
		whole := runGuardServer(stream, maxHead, nil, nil, declining)
		if run.err != nil && run.err.Error() == "no progress" {
			t.Fatal("guard stalled")
		}
		if !bytes.Equal(run.released, whole.released) || run.viol != whole.viol ||
			run.requests != whole.requests || !bytes.Equal(run.written, whole.written) {
			t.Fatalf("verdict depends on cutting: released %q/%q violation %v/%v requests %d/%d",
				run.released, whole.released, run.viol, whole.viol, run.requests, whole.requests)
		}

		valid := run.released
		switch v := run.viol; {
		case v == nil:
			if run.err != io.EOF || len(run.written) != 0 {
				t.Fatalf("clean run ended with %v, wrote %q", run.err, run.written)
			}
		case v == vNotHTTP:
			if len(valid) != 0 || len(run.written) != 0 || run.requests != 0 {
				t.Fatalf("refused a first line that is not HTTP but released %q, wrote %q", valid, run.written)
			}
		case v.head && run.requests == 0:
			if len(valid) != 0 || string(run.written) != string(response(v.status, v.reason, "")) {
				t.Fatalf("refused first head but released %q, wrote %q", valid, run.written)
			}
		case v.head:
			if !bytes.HasSuffix(valid, []byte(substitute)) || len(run.written) != 0 {
				t.Fatalf("refused pipelined head: released %q, wrote %q", valid, run.written)
			}
			valid = valid[:len(valid)-len(substitute)]
		default:
			if run.err != errRefused || len(run.written) != 0 {
				t.Fatalf("body violation ended with %v, wrote %q", run.err, run.written)
			}
		}
		if !bytes.HasPrefix(stream, valid) {
			t.Fatalf("released %q, not a prefix of the stream", valid)
		}
		checkWithNetHTTP(t, valid, run)
	})
}

// checkWithNetHTTP reads the released bytes as net/http's server does and
// compares with the guard's count of requests.
func checkWithNetHTTP(t *testing.T, valid []byte, run guardRun) {
	t.Helper()
	cr := &countReader{r: bytes.NewReader(valid)}
	br := bufio.NewReaderSize(cr, 1<<20)
	pos := func() int { return cr.n - br.Buffered() }
	lastPOST := false
	for i := 0; i < run.requests; i++ {
		if lastPOST {
			peek, _ := br.Peek(4)
			n := 0
			for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
				n++
			}
			_, _ = br.Discard(n)
		}
		start := pos()
		req, err := http.ReadRequest(br)
		if err != nil {
			// net/http checks what the guard leaves to it (the URL,
			// Host fields); anything else is a disagreement.
			var ue *url.Error
			if errors.As(err, &ue) || strings.Contains(err.Error(), "too many Host headers") {
				return
			}
			t.Fatalf("request %d released by the guard, refused by net/http: %v\nhead %q", i, err, valid[start:])
		}
		checkHead(t, valid[start:pos()])
		lastPOST = req.Method == "POST"
		last := i == run.requests-1
		if last && run.pass {
			return
		}
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			if last && (run.viol != nil || pos() == len(valid)) {
				return // the stream ended, or was refused, inside this body
			}
			t.Fatalf("body of request %d: %v", i, err)
		}
	}
	if rest := len(valid) - pos(); rest != 0 && !run.pass {
		t.Fatalf("%d released bytes after the %d requests net/http read: %q", rest, run.requests, valid[pos():])
	}
}

// checkHead is an independent, naive check of a released head for the
// vectors the guard exists to refuse.
func checkHead(t *testing.T, head []byte) {
	t.Helper()
	if !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
		t.Fatalf("head %q does not end with CRLFCRLF", head)
	}
	for i, c := range head {
		switch {
		case c == '\n' && (i == 0 || head[i-1] != '\r'):
			t.Fatalf("bare LF in released head %q", head)
		case c == '\r' && (i+1 == len(head) || head[i+1] != '\n'):
			t.Fatalf("bare CR in released head %q", head)
		case c == 0:
			t.Fatalf("NUL in released head %q", head)
		}
	}
	lines := strings.Split(string(head[:len(head)-4]), "\r\n")
	cl, te := 0, 0
	for _, line := range lines[1:] {
		if line == "" || line[0] == ' ' || line[0] == '\t' {
			t.Fatalf("obs-fold or empty line in released head %q", head)
		}
		name, _, _ := strings.Cut(line, ":")
		switch strings.ToLower(name) {
		case "content-length":
			cl++
		case "transfer-encoding":
			te++
		}
	}
	if cl > 1 || te > 1 || cl > 0 && te > 0 {
		t.Fatalf("released head with %d Content-Length and %d Transfer-Encoding: %q", cl, te, head)
	}
}

type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += n
	return n, err
}
