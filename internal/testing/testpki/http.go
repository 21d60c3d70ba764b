package testpki

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptrace"
	"testing"
	"time"
)

// HTTPClient trusts ca and presents the given client certificate (none
// when certFile is ""); it keeps at most one idle connection per host.
func (ca *CA) HTTPClient(t testing.TB, certFile, keyFile string) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: ca.ClientConfig(t, certFile, keyFile), MaxIdleConnsPerHost: 1}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// Fetch GETs url with c and returns the body, the server certificate's CN
// and whether the connection was reused; a status other than 200 is an
// error.
func Fetch(ctx context.Context, c *http.Client, url string) (string, string, bool, error) {
	reused := false
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	res, err := c.Do(req)
	if err != nil {
		return "", "", false, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return "", "", false, err
	}
	if res.StatusCode != http.StatusOK {
		return "", "", false, errors.New("status " + res.Status + ": " + string(b))
	}
	cn := ""
	if res.TLS != nil {
		cn = res.TLS.PeerCertificates[0].Subject.CommonName
	}
	return string(b), cn, reused, nil
}
