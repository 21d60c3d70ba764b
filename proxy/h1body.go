package proxy

import (
	"bytes"
	"errors"
	"strings"
)

// h1Framing says how an HTTP/1 response body is delimited.
type h1Framing uint8

const (
	frameNone    h1Framing = iota // no body (HEAD, 204, 304, Content-Length: 0)
	frameLength                   // Content-Length
	frameChunked                  // Transfer-Encoding: chunked
	frameClose                    // until the connection closes
)

// bodyDecoder takes an HTTP/1 response body off the bytes of a connection
// as they come, without copying: next returns the body bytes found at the
// start of what it is given and how many bytes of it were framing and body.
// Chunked framing is checked strictly (hex sizes, CRLF after each chunk);
// trailer fields are collected whole.
type bodyDecoder struct {
	framing  h1Framing
	remain   int64 // frameLength: body bytes left; frameChunked: of this chunk
	state    chunkState
	done     bool
	trailers []byte // raw trailer field lines, each ending in CRLF
}

type chunkState uint8

const (
	chunkSize    chunkState = iota // reading a chunk-size line
	chunkData                      // remain bytes of data
	chunkDataEnd                   // the CRLF after the data
	chunkTrailer                   // trailer lines up to the blank one
)

// maxChunkLine bounds a chunk-size line (extensions included) and a
// trailer section.
const maxChunkLine = 4 << 10

var errChunk = errors.New("proxy: malformed chunked encoding from upstream")

// reset prepares d for a body of framing f and length n (frameLength).
func (d *bodyDecoder) reset(f h1Framing, n int64) {
	*d = bodyDecoder{framing: f, remain: n, trailers: d.trailers[:0]}
	if f == frameNone || (f == frameLength && n == 0) {
		d.done = true
	}
}

// next decodes from in: data is body bytes (a slice of in), used the bytes
// of in consumed. It returns with used 0 when in holds no complete piece;
// d.done tells the end of the body.
func (d *bodyDecoder) next(in []byte) (data []byte, used int, err error) {
	switch d.framing {
	case frameNone:
		return nil, 0, nil
	case frameClose:
		return in, len(in), nil
	case frameLength:
		n := min(int64(len(in)), d.remain)
		d.remain -= n
		if d.remain == 0 {
			d.done = true
		}
		return in[:n], int(n), nil
	}
	for !d.done {
		switch d.state {
		case chunkSize:
			i := bytes.IndexByte(in[used:], '\n')
			if i < 0 {
				if len(in)-used > maxChunkLine {
					return nil, used, errChunk
				}
				return nil, used, nil
			}
			line := in[used : used+i+1]
			n, ok := parseChunkSize(line)
			if !ok {
				return nil, used, errChunk
			}
			used += i + 1
			if n == 0 {
				d.state = chunkTrailer
			} else {
				d.remain, d.state = n, chunkData
			}
		case chunkData:
			if used == len(in) {
				return nil, used, nil
			}
			n := min(int64(len(in)-used), d.remain)
			data = in[used : used+int(n)]
			used += int(n)
			if d.remain -= n; d.remain == 0 {
				d.state = chunkDataEnd
			}
			return data, used, nil
		case chunkDataEnd:
			if len(in)-used < 2 {
				return nil, used, nil
			}
			if in[used] != '\r' || in[used+1] != '\n' {
				return nil, used, errChunk
			}
			used += 2
			d.state = chunkSize
		case chunkTrailer:
			i := bytes.IndexByte(in[used:], '\n')
			if i < 0 {
				if len(in)-used+len(d.trailers) > maxChunkLine {
					return nil, used, errChunk
				}
				return nil, used, nil
			}
			line := in[used : used+i+1]
			used += i + 1
			if len(line) < 2 || line[len(line)-2] != '\r' {
				return nil, used, errChunk
			}
			if len(line) == 2 {
				d.done = true
				break
			}
			if !cleanHead(line) || bytes.IndexByte(line, ':') <= 0 || len(d.trailers)+len(line) > maxChunkLine {
				return nil, used, errChunk
			}
			d.trailers = append(d.trailers, line...)
		}
	}
	return nil, used, nil
}

// parseChunkSize parses a chunk-size line (CRLF included, extensions
// ignored).
func parseChunkSize(line []byte) (int64, bool) {
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return 0, false
	}
	line = line[:len(line)-2]
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = bytes.TrimRight(line, " \t")
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range line {
		switch {
		case '0' <= c && c <= '9':
			n = n<<4 | int64(c-'0')
		case 'a' <= c && c <= 'f':
			n = n<<4 | int64(c-'a'+10)
		case 'A' <= c && c <= 'F':
			n = n<<4 | int64(c-'A'+10)
		default:
			return 0, false
		}
	}
	return n, true
}

// trailerFields calls fn with the name and value of each trailer field d
// collected.
func (d *bodyDecoder) trailerFields(fn func(k, v string)) {
	s := string(d.trailers)
	for s != "" {
		k, v, rest, ok := nextField(s)
		if !ok {
			return
		}
		s = rest
		if k == "" || strings.ContainsAny(k, " \t") {
			continue
		}
		fn(k, v)
	}
}
