package otlptest

import (
	"compress/gzip"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// TracesPath is where OTLP/HTTP exporters send spans when given a base
// endpoint.
const TracesPath = "/v1/traces"

// maxBody bounds one export request; real exporters send far less.
const maxBody = 64 << 20

// StartHTTP runs an OTLP/HTTP receiver (binary protobuf, optionally gzip) on
// 127.0.0.1 and stops it when the test ends. Its Endpoint works as
// OTEL_EXPORTER_OTLP_ENDPOINT with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf;
// spans must be posted to TracesPath.
func StartHTTP(t testing.TB) *Receiver {
	t.Helper()
	r := newReceiver()
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+TracesPath, r.serveHTTP)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	r.endpoint = srv.URL
	return r
}

// StartHTTPS is StartHTTP over TLS with a self-signed certificate; CertPEM
// returns the certificate for OTEL_EXPORTER_OTLP_CERTIFICATE. Its Endpoint
// is "https://127.0.0.1:PORT".
func StartHTTPS(t testing.TB) *Receiver {
	t.Helper()
	r := newReceiver()
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+TracesPath, r.serveHTTP)
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	r.endpoint = srv.URL
	r.certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	return r
}

// CertPEM returns the PEM certificate of a StartHTTPS receiver, nil for the
// others.
func (r *Receiver) CertPEM() []byte { return r.certPEM }

func (r *Receiver) serveHTTP(w http.ResponseWriter, req *http.Request) {
	if ct := req.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		http.Error(w, "otlptest: want Content-Type application/x-protobuf, got "+ct, http.StatusUnsupportedMediaType)
		return
	}
	var body io.Reader = http.MaxBytesReader(w, req.Body, maxBody)
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(body)
		if err != nil {
			http.Error(w, "otlptest: bad gzip body: "+err.Error(), http.StatusBadRequest)
			return
		}
		defer zr.Close()
		body = zr
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, "otlptest: reading body: "+err.Error(), http.StatusBadRequest)
		return
	}
	var msg coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &msg); err != nil {
		http.Error(w, "otlptest: decoding ExportTraceServiceRequest: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !r.receive(msg.GetResourceSpans(), req.Header.Clone()) {
		http.Error(w, rejectMsg, http.StatusBadRequest)
		return
	}
	out, err := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}
