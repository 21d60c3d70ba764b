package admin

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"strings"
)

// statusPage is the status page: one self-contained file, inline style and
// script, no external assets, so it works offline.
//
//go:embed status.html
var statusPage []byte

// pageCSP allows exactly the page's own inline style and script (by hash)
// and connections back to the admin listener, nothing else.
var pageCSP = "default-src 'none'; connect-src 'self'; img-src data:; " +
	"style-src " + inlineHash(statusPage, "<style>", "</style>") + "; " +
	"script-src " + inlineHash(statusPage, "<script>", "</script>") + "; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// inlineHash is the CSP source expression for the page's one inline
// element between open and close.
func inlineHash(page []byte, open, close string) string {
	s := string(page)
	i := strings.Index(s, open)
	j := strings.Index(s, close)
	if i < 0 || j < i {
		panic("admin: status page has no " + open + " element")
	}
	sum := sha256.Sum256([]byte(s[i+len(open) : j]))
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

func (s *Server) servePage(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	_, _ = w.Write(statusPage)
}
