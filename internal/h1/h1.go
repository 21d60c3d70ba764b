// Package h1 holds the HTTP/1.1 wire helpers that the proxy's data path
// and its cache share. It only formats bytes: it must not read from or
// write to connections.
package h1

import "strings"

// AppendFieldValue appends v, a field value, with any CR or LF made a
// space, as net/http writes them.
func AppendFieldValue(b []byte, v string) []byte {
	if strings.IndexByte(v, '\r') < 0 && strings.IndexByte(v, '\n') < 0 {
		return append(b, v...)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return b
}
