package httpguard

import (
	"bytes"
	"encoding/binary"
)

// violation says why a stream was refused. Values are package-level and
// never allocated per request.
type violation struct {
	status int    // status of the response written for a head violation
	reason string // short, constant: a log value and a metrics label
	head   bool   // found in a request head; false: inside a body
}

// The reasons, also handed to Options.OnReject (listed in its doc).
var (
	vCLAndTE       = &violation{400, "content-length with transfer-encoding", true}
	vMultiCL       = &violation{400, "multiple content-length", true}
	vBadCL         = &violation{400, "invalid content-length", true}
	vMultiTE       = &violation{400, "multiple transfer-encoding", true}
	vBadTE         = &violation{400, "invalid transfer-encoding", true}
	vUnsupportedTE = &violation{501, "unsupported transfer-encoding", true}
	vTE10          = &violation{400, "transfer-encoding in http/1.0", true}
	vObsFold       = &violation{400, "obs-fold", true}
	vBareLF        = &violation{400, "bare lf", true}
	vBadValue      = &violation{400, "invalid header value", true}
	vBadName       = &violation{400, "invalid header name", true}
	vRequestLine   = &violation{400, "malformed request line", true}
	// vNotHTTP: the first line of a connection names no HTTP version at
	// all (a client speaking another protocol, or an HTTP/2 client with a
	// broken preface): the connection is closed without an answer, which
	// such a client could not read (RFC 9113 section 3.4 asks exactly that
	// of an invalid HTTP/2 preface).
	vNotHTTP      = &violation{400, "not an http request", true}
	vVersion      = &violation{505, "unsupported http version", true}
	vHeadTooLarge = &violation{431, "head too large", true}
	vChunked      = &violation{0, "malformed chunked body", false}
	vTrailer      = &violation{0, "malformed trailer", false}
	vEarlyData    = &violation{0, "data before switching protocols", false}
)

// state is where the parser is in the request stream.
type state uint8

const (
	stHead      state = iota // a request head, released whole once valid
	stBody                   // rem bytes of a Content-Length body
	stChunkLine              // chunk-size [chunk-ext] CRLF
	stChunkData              // rem bytes of chunk data
	stChunkEnd               // the CRLF after chunk data
	stTrailer                // trailer section up to an empty line, released whole
	stAwait                  // after an Upgrade or CONNECT: hold the rest until the server hijacks or goes on
	stPass                   // no longer HTTP/1 requests: everything passes
	stFailed                 // a violation was found: nothing more passes
)

// Sub-states of the chunk framing lines.
const (
	csSize  = iota // hex digits of chunk-size
	csWS           // whitespace after chunk-size
	csExt          // chunk-ext, up to CR
	csLF           // LF ending a chunk line
	csEndCR        // CR after chunk data
	csEndLF        // LF after chunk data
)

// maxChunkLine mirrors net/http's maxLineLength: a chunk line (without its
// CRLF) of this many bytes or more is refused by Go's chunked reader.
const maxChunkLine = 4096

// maxChunkDigits mirrors net/http's parseHexUint, which refuses a 17th digit.
const maxChunkDigits = 16

// maxContentLength is the largest value net/http accepts (ParseUint with 63
// bits).
const maxContentLength = 1<<63 - 1

// head holds what one request head says about framing.
type head struct {
	clCount, teCount     int
	cl                   uint64
	teChunked            bool // the single Transfer-Encoding is "chunked"
	upgrade, connUpgrade bool // an Upgrade field and "upgrade" in Connection
	post, connect        bool
	http10               bool
	pri                  bool // "PRI * HTTP/2.0" opening the connection
}

// parser follows a stream of HTTP/1.x requests and tells how many leading
// bytes can be released to the server. It works in place on the caller's
// bytes and never allocates. A unit (request head or trailer section) is
// only released whole, once valid; body and chunk framing bytes are
// released as they are checked.
type parser struct {
	maxHead  int
	st       state
	requests int  // request heads released
	prevPOST bool // net/http skips up to 4 CR/LF bytes after a POST
	viol     *violation

	// switching: the request in progress is an Upgrade or a CONNECT.
	// With hooked (the server reports its connection states, see
	// ConnState) the stream after it is held in stAwait until the
	// server either hijacks the connection or finishes request
	// awaitReq; without, it passes through.
	switching bool
	hooked    bool
	awaitReq  int

	// Progress in the current unit, as offsets from its first byte, so
	// that the unit can be moved (stashed, compacted) between calls.
	begun     bool
	lineStart int
	searched  int
	lines     int
	h         head

	rem    uint64 // body or chunk-data bytes left
	cs     uint8
	digits int
	line   int // chunk line length so far
	size   uint64
}

func (p *parser) fail(v *violation) {
	p.st = stFailed
	p.viol = v
}

// feed examines b, which starts at the first byte not yet released, and
// returns how many leading bytes of it are released. It stops early at an
// incomplete unit (which then starts at b[n] on the next call, with more
// bytes after it) or at a violation.
func (p *parser) feed(b []byte) (int, *violation) {
	off := 0
	for off < len(b) {
		switch p.st {
		case stHead, stTrailer:
			n, v := p.unit(b[off:])
			if v != nil {
				p.fail(v)
				return off, v
			}
			if n == 0 {
				return off, nil
			}
			off += n
		case stBody, stChunkData:
			off += p.consume(len(b) - off)
		case stChunkLine, stChunkEnd:
			n, v := p.chunk(b[off:])
			off += n
			if v != nil {
				p.fail(v)
				return off, v
			}
		case stPass:
			return len(b), nil
		case stAwait:
			return off, nil
		default:
			return off, p.viol
		}
	}
	return off, nil
}

// consume takes up to n body bytes and returns how many it took.
func (p *parser) consume(n int) int {
	k := uint64(n)
	if k > p.rem {
		k = p.rem
	}
	p.rem -= k
	if p.rem == 0 {
		if p.st == stBody {
			p.done()
		} else {
			p.st, p.cs = stChunkEnd, csEndCR
		}
	}
	return int(k)
}

// unit parses a request head or a trailer section starting at b[0]. It
// returns the unit's length once it is complete and valid, 0 while it is
// incomplete.
func (p *parser) unit(b []byte) (int, *violation) {
	n, v := p.scanLines(b)
	if v != nil && p.st == stTrailer {
		v = vTrailer
	}
	return n, v
}

func (p *parser) scanLines(b []byte) (int, *violation) {
	if !p.begun {
		skip := 0
		if p.st == stHead && p.prevPOST {
			// net/http peeks 4 bytes after a POST and discards the
			// leading CR and LF among them (RFC 7230 section 3.5).
			for skip < len(b) && skip < 4 && (b[skip] == '\r' || b[skip] == '\n') {
				skip++
			}
			if skip == len(b) && skip < 4 {
				return 0, nil
			}
		}
		p.begun, p.lineStart, p.searched = true, skip, skip
	}
	for {
		i := bytes.IndexByte(b[p.searched:], '\n')
		if i < 0 {
			p.searched = len(b)
			if len(b) > p.maxHead {
				return 0, vHeadTooLarge
			}
			return 0, nil
		}
		nl := p.searched + i
		if nl >= p.maxHead {
			return 0, vHeadTooLarge
		}
		line := b[p.lineStart:nl]
		if len(line) == 0 || line[len(line)-1] != '\r' {
			return 0, vBareLF
		}
		line = line[:len(line)-1]
		p.lineStart, p.searched = nl+1, nl+1
		first := p.lines == 0 && p.st == stHead
		p.lines++
		switch {
		case first:
			if v := p.requestLine(line); v != nil {
				return 0, v
			}
		case len(line) == 0:
			return nl + 1, p.endUnit()
		default:
			if v := p.field(line); v != nil {
				return 0, v
			}
		}
	}
}

// requestLine checks method SP request-target SP HTTP-version.
func (p *parser) requestLine(line []byte) *violation {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return vRequestLine
	}
	method, rest := line[:sp], line[sp+1:]
	for _, c := range method {
		if !tchar[c] {
			return vRequestLine
		}
	}
	sp = bytes.IndexByte(rest, ' ')
	if sp <= 0 {
		return vRequestLine
	}
	target, version := rest[:sp], rest[sp+1:]
	if !validBytes(target, &targetByte) {
		return vRequestLine
	}
	h := &p.h
	switch string(version) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		h.http10 = true
	default:
		if p.requests == 0 && (len(version) < 5 || !bytes.EqualFold(version[:5], []byte("HTTP/"))) {
			return vNotHTTP
		}
		if len(version) != 8 || string(version[:5]) != "HTTP/" ||
			!isDigit(version[5]) || version[6] != '.' || !isDigit(version[7]) {
			return vRequestLine
		}
		if string(version) == "HTTP/2.0" && string(method) == "PRI" &&
			string(target) == "*" && p.requests == 0 {
			h.pri = true
			break
		}
		return vVersion
	}
	h.post = string(method) == "POST"
	h.connect = string(method) == "CONNECT"
	return nil
}

// field checks one field line (not the first of a head) and notes the
// framing fields of a head.
func (p *parser) field(line []byte) *violation {
	if line[0] == ' ' || line[0] == '\t' {
		return vObsFold
	}
	colon := -1
	for i, c := range line {
		if c == ':' {
			colon = i
			break
		}
		if !tchar[c] {
			return vBadName
		}
	}
	if colon <= 0 {
		return vBadName
	}
	name, value := line[:colon], line[colon+1:]
	if !validBytes(value, &valueByte) {
		return vBadValue
	}
	if p.st != stHead {
		return nil
	}
	h := &p.h
	switch len(name) {
	case len("content-length"):
		if !equalFold(name, "content-length") {
			return nil
		}
		n, ok := parseLength(trimOWS(value))
		if !ok {
			return vBadCL
		}
		if h.clCount++; h.clCount > 1 {
			return vMultiCL
		}
		h.cl = n
	case len("transfer-encoding"):
		if !equalFold(name, "transfer-encoding") {
			return nil
		}
		if h.teCount++; h.teCount > 1 {
			return vMultiTE
		}
		v := trimOWS(value)
		switch {
		case equalFold(v, "chunked"):
			h.teChunked = true
		case !tokenList(v):
			return vBadTE
		}
	case len("upgrade"):
		if equalFold(name, "upgrade") {
			h.upgrade = true
		}
	case len("connection"):
		if equalFold(name, "connection") && hasToken(value, "upgrade") {
			h.connUpgrade = true
		}
	}
	return nil
}

// endUnit runs at the empty line ending a unit: it settles the framing of
// a head and picks the next state.
func (p *parser) endUnit() *violation {
	h := p.h
	trailer := p.st == stTrailer
	lines := p.lines
	p.begun, p.lineStart, p.searched, p.lines, p.h = false, 0, 0, 0, head{}
	if trailer {
		p.done()
		return nil
	}
	switch {
	case h.pri:
		if lines != 2 { // the request line and the empty line
			return vVersion
		}
		p.requests++
		p.st = stPass
		return nil
	case h.teCount > 0 && h.clCount > 0:
		return vCLAndTE
	case h.teCount > 0 && h.http10:
		return vTE10
	case h.teCount > 0 && !h.teChunked:
		return vUnsupportedTE
	}
	p.requests++
	p.prevPOST = h.post
	p.switching = h.connect || h.upgrade && h.connUpgrade
	switch {
	case p.switching && !p.hooked:
		p.st = stPass
	case h.teChunked:
		p.st, p.cs, p.digits, p.line, p.size = stChunkLine, csSize, 0, 0, 0
	case h.cl > 0:
		p.st, p.rem = stBody, h.cl
	default:
		p.done()
	}
	return nil
}

// done runs at the end of a request message.
func (p *parser) done() {
	if p.switching {
		p.st, p.awaitReq = stAwait, p.requests
		return
	}
	p.st = stHead
}

// resume goes on parsing requests after an Upgrade or CONNECT request that
// the server answered without taking the connection over.
func (p *parser) resume() {
	p.st, p.switching = stHead, false
}

// chunk checks chunk lines and the CRLF after chunk data, byte by byte. It
// returns at the end of b, when the state changes, or at a violation, with
// the count of bytes checked.
func (p *parser) chunk(b []byte) (int, *violation) {
	for i, c := range b {
		switch p.cs {
		case csSize:
			if d := unhex[c]; d < 16 {
				if p.digits++; p.digits > maxChunkDigits {
					return i, vChunked
				}
				p.size = p.size<<4 | uint64(d)
				break
			}
			if p.digits == 0 {
				return i, vChunked
			}
			switch c {
			case ';':
				p.cs = csExt
			case ' ', '\t':
				p.cs = csWS
			case '\r':
				p.cs = csLF
			default:
				return i, vChunked
			}
		case csWS:
			// net/http trims whitespace at the end of the line only,
			// so "5 ;ext" is refused there: refuse it here too.
			switch c {
			case ' ', '\t':
			case '\r':
				p.cs = csLF
			default:
				return i, vChunked
			}
		case csExt:
			if c == '\r' {
				p.cs = csLF
			} else if !valueByte[c] {
				return i, vChunked
			}
		case csLF:
			if c != '\n' {
				return i, vChunked
			}
			if p.size == 0 {
				p.st = stTrailer
			} else {
				p.st, p.rem = stChunkData, p.size
			}
			return i + 1, nil
		case csEndCR:
			if c != '\r' {
				return i, vChunked
			}
			p.cs = csEndLF
		case csEndLF:
			if c != '\n' {
				return i, vChunked
			}
			p.st, p.cs, p.digits, p.line, p.size = stChunkLine, csSize, 0, 0, 0
			return i + 1, nil
		}
		if p.cs <= csExt && c != '\r' {
			if p.line++; p.line >= maxChunkLine {
				return i, vChunked
			}
		}
	}
	return len(b), nil
}

// parseLength parses 1*DIGIT as net/http does (at most 2^63-1).
func parseLength(v []byte) (uint64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	var n uint64
	for _, c := range v {
		if !isDigit(c) {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (maxContentLength-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// tokenList reports whether v is a comma-separated list of tokens, each
// optionally with ;parameters: a transfer-coding list that is well formed
// but that net/http does not implement (501 rather than 400).
func tokenList(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		elem := v
		if i >= 0 {
			elem, v = v[:i], v[i+1:]
			if len(trimOWS(v)) == 0 {
				return false
			}
		} else {
			v = nil
		}
		elem = trimOWS(elem)
		if len(elem) == 0 {
			return false
		}
		for _, c := range elem {
			if !tchar[c] && c != ';' && c != '=' && c != ' ' && c != '\t' {
				return false
			}
		}
		if !tchar[elem[0]] {
			return false
		}
	}
	return true
}

// hasToken reports whether the comma-separated list v holds tok, compared
// without case.
func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		elem := v
		if i := bytes.IndexByte(v, ','); i >= 0 {
			elem, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if equalFold(trimOWS(elem), tok) {
			return true
		}
	}
	return false
}

// validBytes reports whether every byte of v is allowed by table, which
// must allow all bytes from 0x20 up except 0x7f (and may allow HTAB). It
// checks 8 bytes at a time for a control byte or DEL, and looks at single
// bytes only in a word that has one: most values have none. Byte by byte,
// BenchmarkParse (a 517-byte browser head) took about 575 ns; this way
// about 250 ns.
func validBytes(v []byte, table *[256]bool) bool {
	const (
		ones = 0x0101010101010101
		high = 0x8080808080808080
	)
	for len(v) >= 8 {
		x := binary.LittleEndian.Uint64(v)
		// A byte below 0x20, or a byte equal to 0x7f.
		if (x-0x20*ones)&^x&high != 0 || ((x^0x7f*ones)-ones)&^(x^0x7f*ones)&high != 0 {
			for _, c := range v[:8] {
				if !table[c] {
					return false
				}
			}
		}
		v = v[8:]
	}
	for _, c := range v {
		if !table[c] {
			return false
		}
	}
	return true
}

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// equalFold compares ASCII without case; s must be lower case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

var (
	// tchar marks the bytes of a token (RFC 9110 section 5.6.2).
	tchar [256]bool
	// valueByte marks the bytes allowed in a field value: HTAB, SP,
	// VCHAR, obs-text. No NUL, CR, LF or other control.
	valueByte [256]bool
	// targetByte marks the bytes allowed in a request-target: no
	// controls (HTAB included), no DEL. SP ends it.
	targetByte [256]bool
	// unhex maps hex digits to their value, anything else to 255.
	unhex [256]byte
)

func init() {
	for c := 0; c < 256; c++ {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
			tchar[c] = true
		}
		valueByte[c] = c == '\t' || (c >= 0x20 && c != 0x7f)
		targetByte[c] = c >= 0x20 && c != 0x7f
		unhex[c] = 255
		switch {
		case '0' <= c && c <= '9':
			unhex[c] = byte(c - '0')
		case 'a' <= c && c <= 'f':
			unhex[c] = byte(c - 'a' + 10)
		case 'A' <= c && c <= 'F':
			unhex[c] = byte(c - 'A' + 10)
		}
	}
	for _, c := range []byte("!#$%&'*+-.^_`|~") {
		tchar[c] = true
	}
}
