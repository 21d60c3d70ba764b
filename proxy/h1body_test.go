package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http/httputil"
	"testing"
)

// decodeAll runs d over in, fed in pieces of at most step bytes as a
// connection would deliver them, and returns the body and whether d saw
// its end.
func decodeAll(d *bodyDecoder, in []byte, step int) ([]byte, bool, error) {
	var body, pending []byte
	for !d.done {
		if len(pending) == 0 || step > 0 {
			if len(in) == 0 && len(pending) == 0 {
				return body, false, nil
			}
			n := min(len(in), max(step, 1))
			if step <= 0 {
				n = len(in)
			}
			pending = append(pending, in[:n]...)
			in = in[n:]
		}
		data, used, err := d.next(pending)
		if err != nil {
			return body, false, err
		}
		body = append(body, data...)
		pending = pending[used:]
		if used == 0 && len(in) == 0 {
			return body, d.done, nil
		}
	}
	return body, true, nil
}

// FuzzBodyDecoderChunked checks the loop's chunked decoder against
// net/http's on the same bytes, delivered whole and a byte at a time:
// where net/http reads a whole body, the decoder gives the same bytes;
// where the decoder ends a body, net/http agrees on it.
func FuzzBodyDecoderChunked(f *testing.F) {
	for _, s := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Sum: 12\r\n\r\n",
		"0\r\n\r\n",
		"A\r\n0123456789\r\n0\r\n\r\n",
		"5\r\nhello\n0\r\n\r\n",
		"-1\r\n\r\n",
		"5 \r\nhello\r\n0\r\n\r\n",
		"fffffffffffffffff\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		want, werr := io.ReadAll(httputil.NewChunkedReader(bufio.NewReader(bytes.NewReader(in))))
		for _, step := range []int{0, 1, 7} {
			var d bodyDecoder
			d.reset(frameChunked, 0)
			got, done, err := decodeAll(&d, in, step)
			if err != nil || !done {
				continue // refused or incomplete: the loop closes the connection, no body is passed on whole
			}
			if werr != nil {
				t.Fatalf("step %d: the decoder took %q as a whole body of %q, net/http: %v", step, got, in, werr)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("step %d: decoder %q, net/http %q, on %q", step, got, want, in)
			}
		}
	})
}

func TestBodyDecoderLength(t *testing.T) {
	var d bodyDecoder
	d.reset(frameLength, 5)
	body, done, err := decodeAll(&d, []byte("helloEXTRA"), 3)
	if err != nil || !done || string(body) != "hello" {
		t.Fatalf("got %q %v %v, want hello, done", body, done, err)
	}
}
