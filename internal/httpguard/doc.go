// Package httpguard wraps the edge's net.Listener so that HTTP/1.x requests
// that different parsers could read in different ways (request smuggling
// vectors) are refused before net/http parses them, and so that the number
// of live connections can be capped without stalling the accept loop.
//
// The wrapped connection follows the byte stream as HTTP/1.x requests: it
// holds back each request head until it is complete and valid, then
// releases it unchanged, then lets the body through as the head frames it
// (Content-Length, or chunked with its chunk lines and trailer section
// checked), then the next pipelined head. Refused: Content-Length together
// with Transfer-Encoding, several Content-Length fields or an invalid one,
// Transfer-Encoding other than one "chunked" (501 when it is a well-formed
// coding list that net/http does not implement, as net/http answers, else
// 400), Transfer-Encoding in HTTP/1.0, obs-fold (a line starting with SP or
// HTAB), a line ending in a bare LF, CR or NUL or another control in a
// field value, an invalid field name, a malformed request line, HTTP
// versions other than 1.0 and 1.1 (505), and a head larger than
// MaxHeaderBytes (431). RFC 9112 lets a recipient accept a bare LF as a line
// end; the guard does not, because parsers that disagree on it can be
// desynchronised and no real client sends one.
//
// What it releases, net/http frames the same way: its rules are a subset
// of what net/http accepts, and it mirrors net/http where that matters for
// framing (up to four CR/LF bytes skipped after a POST, the 16-digit and
// 4096-byte limits of chunk lines, no whitespace between chunk-size and
// ';').
//
// Pipelining: the response for a refused head is written directly only
// when that head is the first request on the connection, when nothing else
// can be pending. When earlier requests were released, their responses may
// still be on the way, so the guard releases a fixed malformed request
// line in place of the refused head: net/http answers it with its own "400
// Bad Request" after the earlier responses, in order, and closes. A
// violation inside a request already released (a chunked body, a trailer,
// too much data before the answer to an Upgrade) makes Read fail, so the
// handler sees a broken body and the connection closes; no response is
// injected. Either way no handler sees the refused request.
//
// The package must not change or reorder bytes, hold body bytes back, or
// look into what is not HTTP/1 requests: the rest of a connection passes
// through unexamined after the HTTP/2 prior-knowledge preface or a TLS
// record at its start, and after an Upgrade request (with "upgrade" in
// Connection) or a CONNECT once the server hijacks the connection (see
// ConnState; without it, right after such a request). It therefore has to
// wrap the plaintext listener: under tls.NewListener it sees only TLS
// records and does nothing but MaxConns, and above it the server would
// lose the *tls.Conn it needs for ALPN and Request.TLS.
//
// Because a head is released only once complete, net/http sees no byte of
// a slowly sent head: for the first request its ReadHeaderTimeout still
// applies (it is armed when the connection is accepted); for later ones on
// a keep-alive connection its IdleTimeout does, which gives a slow client
// no more time than an idle one has anyway.
package httpguard
