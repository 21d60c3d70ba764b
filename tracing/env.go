package tracing

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// The standard variables this package reads. See the OpenTelemetry
// specification, "Environment Variable Specification" and "OTLP Exporter
// Configuration".
const (
	envSDKDisabled     = "OTEL_SDK_DISABLED"
	envTracesExporter  = "OTEL_TRACES_EXPORTER"
	envServiceName     = "OTEL_SERVICE_NAME"
	envResourceAttrs   = "OTEL_RESOURCE_ATTRIBUTES"
	envSampler         = "OTEL_TRACES_SAMPLER"
	envSamplerArg      = "OTEL_TRACES_SAMPLER_ARG"
	envEndpoint        = "OTEL_EXPORTER_OTLP_ENDPOINT"
	envTracesEndpoint  = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	envProtocol        = "OTEL_EXPORTER_OTLP_PROTOCOL"
	envTracesProtocol  = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	envHeaders         = "OTEL_EXPORTER_OTLP_HEADERS"
	envTracesHeaders   = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
	envTimeout         = "OTEL_EXPORTER_OTLP_TIMEOUT"
	envTracesTimeout   = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
	envCompression     = "OTEL_EXPORTER_OTLP_COMPRESSION"
	envTracesCompress  = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"
	envCertificate     = "OTEL_EXPORTER_OTLP_CERTIFICATE"
	envTracesCert      = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"
	envClientCert      = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
	envTracesClientCrt = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"
	envClientKey       = "OTEL_EXPORTER_OTLP_CLIENT_KEY"
	envTracesClientKey = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY"
)

// Protocols accepted in OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL.
const (
	ProtocolGRPC         = "grpc"
	ProtocolHTTPProtobuf = "http/protobuf"
	// DefaultProtocol is the specification's default ("SDKs SHOULD default
	// to http/protobuf"), so a collector address copied from any other
	// OpenTelemetry SDK's setup means the same thing here. Set
	// OTEL_EXPORTER_OTLP_PROTOCOL=grpc for a collector's gRPC port (4317).
	DefaultProtocol = ProtocolHTTPProtobuf
)

// tracesPath is appended to OTEL_EXPORTER_OTLP_ENDPOINT for OTLP/HTTP; the
// per-signal variable is used as it is.
const tracesPath = "/v1/traces"

var samplerNames = []string{
	"always_on", "always_off", "traceidratio",
	"parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio",
}

// config is the validated tracing configuration read from the environment.
type config struct {
	// off is true when tracing is disabled; offReason says why (for the log).
	off       bool
	offReason string

	protocol    string
	endpoint    *url.URL // full URL the exporter posts to (HTTP) or dials (gRPC)
	endpointVar string   // the variable endpoint came from, for messages
	headers     map[string]string
	timeout     time.Duration // 0: the exporter's default
	gzip        bool
	tls         *tls.Config // nil: system roots, no client certificate

	sampler     sdktrace.Sampler
	samplerDesc string

	serviceName   string               // OTEL_SERVICE_NAME, "" if unset
	resourceAttrs []attribute.KeyValue // OTEL_RESOURCE_ATTRIBUTES

	warnings []string // values that are accepted but probably not meant
}

// readConfig reads and validates every variable up front, so that a typo is
// an error at start naming the variable, not a silently dropped setting (the
// exporters themselves log and ignore values they cannot parse).
func readConfig(getenv func(string) string, readFile func(string) ([]byte, error)) (*config, error) {
	get := func(k string) string { return strings.TrimSpace(getenv(k)) }
	c := &config{}

	switch v := get(envSDKDisabled); {
	case strings.EqualFold(v, "true"):
		c.off, c.offReason = true, envSDKDisabled+"=true"
	case v != "" && !strings.EqualFold(v, "false"):
		// The specification: anything but "true" means false, with a warning.
		c.warnings = append(c.warnings, fmt.Sprintf("%s=%q is not true or false; taking it as false", envSDKDisabled, v))
	}

	if v := get(envTracesExporter); v != "" {
		for _, e := range strings.Split(v, ",") {
			switch strings.TrimSpace(e) {
			case "otlp":
			case "none":
				if !c.off {
					c.off, c.offReason = true, envTracesExporter+"=none"
				}
			default:
				return nil, fmt.Errorf("%s=%q: exporter %q is not supported: want otlp or none", envTracesExporter, v, strings.TrimSpace(e))
			}
		}
	}

	// Validate everything even when off: a wrong value is a mistake either way.
	if err := c.readProtocol(get); err != nil {
		return nil, err
	}
	if err := c.readEndpoint(get); err != nil {
		return nil, err
	}
	if err := c.readSampler(get); err != nil {
		return nil, err
	}
	if err := c.readResource(get); err != nil {
		return nil, err
	}
	if err := c.readExporterOptions(get, readFile); err != nil {
		return nil, err
	}
	if c.endpoint == nil && !c.off {
		c.off, c.offReason = true, "no "+envEndpoint+" or "+envTracesEndpoint
	}
	return c, nil
}

// perSignal returns the traces-specific variable's value if set, else the
// general one's, and the name of the variable it came from.
func perSignal(get func(string) string, general, traces string) (string, string) {
	if v := get(traces); v != "" {
		return v, traces
	}
	return get(general), general
}

func (c *config) readProtocol(get func(string) string) error {
	for _, k := range []string{envProtocol, envTracesProtocol} {
		switch v := get(k); v {
		case "", ProtocolGRPC, ProtocolHTTPProtobuf:
		default:
			return fmt.Errorf("%s=%q is not a supported protocol: want %s or %s", k, v, ProtocolGRPC, ProtocolHTTPProtobuf)
		}
	}
	c.protocol, _ = perSignal(get, envProtocol, envTracesProtocol)
	if c.protocol == "" {
		c.protocol = DefaultProtocol
	}
	return nil
}

// readEndpoint needs the protocol: for OTLP/HTTP the general variable is a
// base URL to which /v1/traces is appended; the per-signal one is used as
// it is.
func (c *config) readEndpoint(get func(string) string) error {
	for _, k := range []string{envEndpoint, envTracesEndpoint} {
		v := get(k)
		if v == "" {
			continue
		}
		u, err := parseEndpoint(k, v)
		if err != nil {
			return err
		}
		if k == envTracesEndpoint || c.endpoint == nil {
			c.endpoint, c.endpointVar = u, k
		}
	}
	if c.endpoint == nil || c.protocol != ProtocolHTTPProtobuf {
		return nil
	}
	u := *c.endpoint
	if c.endpointVar == envEndpoint {
		u.Path = path.Join("/", u.Path, tracesPath)
		u.RawPath = ""
	} else if u.Path == "" {
		u.Path = "/"
	}
	c.endpoint = &u
	return nil
}

func parseEndpoint(k, v string) (*url.URL, error) {
	const want = "want a URL like http://collector:4318 (or https://...)"
	u, err := url.Parse(v)
	if err != nil {
		return nil, fmt.Errorf("%s=%q is not a URL: %s: %w", k, v, want, err)
	}
	if s := strings.ToLower(u.Scheme); s != "http" && s != "https" {
		return nil, fmt.Errorf("%s=%q has no http or https scheme: %s", k, v, want)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("%s=%q has no host: %s", k, v, want)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%s=%q has port %q outside 1-65535: %s", k, v, p, want)
		}
	}
	u.Scheme = strings.ToLower(u.Scheme)
	return u, nil
}

func (c *config) readSampler(get func(string) string) error {
	name := strings.ToLower(get(envSampler))
	if name == "" {
		name = "parentbased_always_on"
	}
	ratio := 1.0 // the specification's default for ratio samplers
	if strings.HasSuffix(name, "traceidratio") {
		if v := get(envSamplerArg); v != "" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || math.IsNaN(f) || f < 0 || f > 1 {
				return fmt.Errorf("%s=%q is not a sampling ratio: want a number from 0 to 1 for %s=%s", envSamplerArg, v, envSampler, name)
			}
			ratio = f
		}
	}
	switch name {
	case "always_on":
		c.sampler = sdktrace.AlwaysSample()
	case "always_off":
		c.sampler = sdktrace.NeverSample()
	case "traceidratio":
		c.sampler = sdktrace.TraceIDRatioBased(ratio)
	case "parentbased_always_on":
		c.sampler = sdktrace.ParentBased(sdktrace.AlwaysSample())
	case "parentbased_always_off":
		c.sampler = sdktrace.ParentBased(sdktrace.NeverSample())
	case "parentbased_traceidratio":
		c.sampler = sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))
	default:
		return fmt.Errorf("%s=%q is not a supported sampler: want one of %s", envSampler, get(envSampler), strings.Join(samplerNames, ", "))
	}
	c.samplerDesc = c.sampler.Description()
	return nil
}

// readResource parses OTEL_RESOURCE_ATTRIBUTES with the SDK's rules
// (resource.WithFromEnv: comma-separated key=value, values percent-decoded,
// blanks trimmed), but reads it through getenv and fails on a malformed pair
// instead of dropping it. TestResourceMatchesSDK keeps the two in step.
func (c *config) readResource(get func(string) string) error {
	c.serviceName = get(envServiceName)
	v := get(envResourceAttrs)
	if v == "" {
		return nil
	}
	for _, pair := range strings.Split(v, ",") {
		if strings.TrimSpace(pair) == "" {
			continue // tolerate "a=b," and "a=b,,c=d"
		}
		k, val, ok := strings.Cut(pair, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return fmt.Errorf("%s: %q is not key=value: want a comma-separated list like service.namespace=shop,deployment.environment=prod", envResourceAttrs, pair)
		}
		dec, err := url.PathUnescape(strings.TrimSpace(val))
		if err != nil {
			return fmt.Errorf("%s: value of %q is badly percent-encoded: %w", envResourceAttrs, k, err)
		}
		c.resourceAttrs = append(c.resourceAttrs, attribute.String(k, dec))
	}
	return nil
}

// readExporterOptions validates the remaining OTEL_EXPORTER_OTLP_* variables
// the exporters would otherwise parse leniently. Setup hands the values to
// the exporter as explicit options, so what is validated is what is used.
func (c *config) readExporterOptions(get func(string) string, readFile func(string) ([]byte, error)) error {
	for _, k := range []string{envHeaders, envTracesHeaders} {
		if _, err := parseHeaders(k, get(k)); err != nil {
			return err
		}
	}
	hv, hk := perSignal(get, envHeaders, envTracesHeaders)
	c.headers, _ = parseHeaders(hk, hv)

	for _, k := range []string{envTimeout, envTracesTimeout} {
		if v := get(k); v != "" {
			ms, err := strconv.Atoi(v)
			if err != nil || ms <= 0 {
				return fmt.Errorf("%s=%q is not a timeout: want a positive whole number of milliseconds", k, v)
			}
		}
	}
	if v, _ := perSignal(get, envTimeout, envTracesTimeout); v != "" {
		ms, _ := strconv.Atoi(v)
		c.timeout = time.Duration(ms) * time.Millisecond
	}

	for _, k := range []string{envCompression, envTracesCompress} {
		switch v := get(k); v {
		case "", "gzip", "none":
		default:
			return fmt.Errorf("%s=%q is not a supported compression: want gzip or none", k, v)
		}
	}
	cv, _ := perSignal(get, envCompression, envTracesCompress)
	c.gzip = cv == "gzip"

	return c.readTLS(get, readFile)
}

// parseHeaders parses "k1=v1,k2=v2" (values percent-decoded) as the
// specification and the exporters do.
func parseHeaders(k, v string) (map[string]string, error) {
	if v == "" {
		return nil, nil
	}
	h := map[string]string{}
	for _, pair := range strings.Split(v, ",") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		name, val, ok := strings.Cut(pair, "=")
		name = strings.TrimSpace(name)
		if !ok || !validHeaderName(name) {
			return nil, fmt.Errorf("%s: %q is not name=value with an HTTP header name: want a comma-separated list like api-key=secret", k, redactPair(pair))
		}
		dec, err := url.PathUnescape(strings.TrimSpace(val))
		if err != nil {
			return nil, fmt.Errorf("%s: value of header %q is badly percent-encoded: %w", k, name, err)
		}
		h[name] = dec
	}
	return h, nil
}

// redactPair keeps a header value (often a credential) out of an error.
func redactPair(pair string) string {
	if name, _, ok := strings.Cut(pair, "="); ok {
		return strings.TrimSpace(name) + "=…"
	}
	if len(pair) > 12 {
		return pair[:4] + "…"
	}
	return pair
}

func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case strings.ContainsRune("!#$%&'*+-.^_`|~", r):
		default:
			return false
		}
	}
	return true
}

func (c *config) readTLS(get func(string) string, readFile func(string) ([]byte, error)) error {
	if readFile == nil {
		readFile = os.ReadFile
	}
	var conf *tls.Config
	for _, k := range []string{envCertificate, envTracesCert} {
		file := get(k)
		if file == "" {
			continue
		}
		pem, err := readFile(file)
		if err != nil {
			return fmt.Errorf("%s=%q: cannot read the CA certificate: %w", k, file, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%s=%q: no PEM certificate in the file", k, file)
		}
		if conf == nil {
			conf = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		conf.RootCAs = pool // the per-signal variable comes second and wins
	}
	pairs := [][2]string{{envClientCert, envClientKey}, {envTracesClientCrt, envTracesClientKey}}
	for _, p := range pairs {
		certFile, keyFile := get(p[0]), get(p[1])
		if certFile == "" && keyFile == "" {
			continue
		}
		if certFile == "" || keyFile == "" {
			return fmt.Errorf("%s and %s must be set together", p[0], p[1])
		}
		certPEM, err := readFile(certFile)
		if err != nil {
			return fmt.Errorf("%s=%q: cannot read the client certificate: %w", p[0], certFile, err)
		}
		keyPEM, err := readFile(keyFile)
		if err != nil {
			return fmt.Errorf("%s=%q: cannot read the client key: %w", p[1], keyFile, err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return fmt.Errorf("%s=%q and %s=%q are not a certificate and its key: %w", p[0], certFile, p[1], keyFile, err)
		}
		if conf == nil {
			conf = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	c.tls = conf
	if conf != nil && c.endpoint != nil && c.endpoint.Scheme == "http" {
		c.warnings = append(c.warnings, fmt.Sprintf("TLS certificate variables are set but %s is http://, so the connection is plain; use https:// for TLS", c.endpointVar))
	}
	return nil
}
