package tracing

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
)

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestReadConfigRejects(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	const ep = "http://127.0.0.1:4318"
	tests := []struct {
		name    string
		env     map[string]string
		wantVar string
		want    string // also in the message
	}{
		{"protocol json", map[string]string{envEndpoint: ep, envProtocol: "http/json"}, envProtocol, "grpc or http/protobuf"},
		{"traces protocol", map[string]string{envEndpoint: ep, envTracesProtocol: "udp"}, envTracesProtocol, `"udp"`},
		{"protocol checked when off", map[string]string{envProtocol: "grcp"}, envProtocol, "grpc or http/protobuf"},
		{"endpoint unparseable", map[string]string{envEndpoint: "http://[::1"}, envEndpoint, "not a URL"},
		{"endpoint no scheme", map[string]string{envEndpoint: "collector:4317"}, envEndpoint, "http://collector:4318"},
		{"endpoint no host", map[string]string{envEndpoint: "http://"}, envEndpoint, "no host"},
		{"endpoint only port", map[string]string{envEndpoint: "http://:4318"}, envEndpoint, "no host"},
		{"endpoint bad port", map[string]string{envEndpoint: "http://c:99999"}, envEndpoint, "99999"},
		{"traces endpoint scheme", map[string]string{envTracesEndpoint: "ftp://c:21"}, envTracesEndpoint, "scheme"},
		{"unused general endpoint still checked", map[string]string{envEndpoint: "junk", envTracesEndpoint: ep}, envEndpoint, "junk"},
		{"sampler unknown", map[string]string{envEndpoint: ep, envSampler: "sometimes"}, envSampler, "parentbased_always_on"},
		{"sampler jaeger", map[string]string{envEndpoint: ep, envSampler: "jaeger_remote"}, envSampler, "traceidratio"},
		{"ratio above 1", map[string]string{envEndpoint: ep, envSampler: "traceidratio", envSamplerArg: "1.5"}, envSamplerArg, "0 to 1"},
		{"ratio below 0", map[string]string{envEndpoint: ep, envSampler: "traceidratio", envSamplerArg: "-0.1"}, envSamplerArg, "0 to 1"},
		{"ratio words", map[string]string{envEndpoint: ep, envSampler: "parentbased_traceidratio", envSamplerArg: "half"}, envSamplerArg, "half"},
		{"ratio NaN", map[string]string{envEndpoint: ep, envSampler: "traceidratio", envSamplerArg: "NaN"}, envSamplerArg, "0 to 1"},
		{"resource no value", map[string]string{envEndpoint: ep, envResourceAttrs: "a=1,novalue"}, envResourceAttrs, "novalue"},
		{"resource no key", map[string]string{envEndpoint: ep, envResourceAttrs: "=x"}, envResourceAttrs, "key=value"},
		{"resource bad escape", map[string]string{envEndpoint: ep, envResourceAttrs: "k=%zz"}, envResourceAttrs, `"k"`},
		{"headers bad name", map[string]string{envEndpoint: ep, envHeaders: "bad name=secret"}, envHeaders, "bad name"},
		{"headers no equals", map[string]string{envEndpoint: ep, envTracesHeaders: "justtext"}, envTracesHeaders, "name=value"},
		{"timeout unit", map[string]string{envEndpoint: ep, envTimeout: "10s"}, envTimeout, "milliseconds"},
		{"timeout zero", map[string]string{envEndpoint: ep, envTracesTimeout: "0"}, envTracesTimeout, "positive"},
		{"compression", map[string]string{envEndpoint: ep, envCompression: "br"}, envCompression, "gzip or none"},
		{"ca missing", map[string]string{envEndpoint: ep, envCertificate: filepath.Join(dir, "none.pem")}, envCertificate, "cannot read"},
		{"ca garbage", map[string]string{envEndpoint: ep, envTracesCert: garbage}, envTracesCert, "no PEM"},
		{"client cert without key", map[string]string{envEndpoint: ep, envClientCert: garbage}, envClientKey, "together"},
		{"client pair garbage", map[string]string{envEndpoint: ep, envTracesClientCrt: garbage, envTracesClientKey: garbage}, envTracesClientCrt, "not a certificate"},
		{"exporter zipkin", map[string]string{envEndpoint: ep, envTracesExporter: "zipkin"}, envTracesExporter, "otlp or none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readConfig(envOf(tt.env), os.ReadFile)
			if err == nil {
				t.Fatalf("readConfig(%v) = nil error, want one naming %s", tt.env, tt.wantVar)
			}
			if !strings.Contains(err.Error(), tt.wantVar) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q: want it to name %s and say %q", err, tt.wantVar, tt.want)
			}
			// Setup reports the same error and installs no provider.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			tp, on, err := NewProvider(ctx, Options{Getenv: envOf(tt.env), Logger: testLogger(t)})
			if err == nil || on || tp != nil {
				t.Fatalf("NewProvider = %v, %v, %v; want nil, false, an error", tp, on, err)
			}
		})
	}
}

func TestReadConfigAccepts(t *testing.T) {
	tests := []struct {
		name         string
		env          map[string]string
		wantOff      string // substring of offReason; "" = on
		wantProtocol string
		wantURL      string
		wantSampler  string
	}{
		{name: "nothing set", env: nil, wantOff: envEndpoint},
		{name: "sdk disabled", env: map[string]string{envEndpoint: "http://c:4318", envSDKDisabled: "TRUE"}, wantOff: envSDKDisabled},
		{name: "exporter none", env: map[string]string{envEndpoint: "http://c:4318", envTracesExporter: "none"}, wantOff: "none"},
		{
			name: "spec defaults", env: map[string]string{envEndpoint: "http://c:4318"},
			wantProtocol: ProtocolHTTPProtobuf, wantURL: "http://c:4318/v1/traces",
			wantSampler: "ParentBased{root:AlwaysOnSampler",
		},
		{
			name: "base path kept", env: map[string]string{envEndpoint: "https://c:4318/otlp/", envSampler: "always_on"},
			wantProtocol: ProtocolHTTPProtobuf, wantURL: "https://c:4318/otlp/v1/traces", wantSampler: "AlwaysOnSampler",
		},
		{
			name: "traces endpoint as is", env: map[string]string{envEndpoint: "http://a:1", envTracesEndpoint: "http://b:4318/custom"},
			wantProtocol: ProtocolHTTPProtobuf, wantURL: "http://b:4318/custom",
		},
		{
			name: "traces endpoint root", env: map[string]string{envTracesEndpoint: "http://b:4318"},
			wantProtocol: ProtocolHTTPProtobuf, wantURL: "http://b:4318/",
		},
		{
			name: "grpc", env: map[string]string{envEndpoint: "HTTP://c:4317", envProtocol: "grpc", envSampler: "traceidratio", envSamplerArg: "0.25"},
			wantProtocol: ProtocolGRPC, wantURL: "http://c:4317", wantSampler: "TraceIDRatioBased{0.25}",
		},
		{
			name: "traces protocol wins", env: map[string]string{envEndpoint: "http://c:4317", envProtocol: "http/protobuf", envTracesProtocol: "grpc"},
			wantProtocol: ProtocolGRPC, wantURL: "http://c:4317",
		},
		{
			name: "ratio default 1", env: map[string]string{envEndpoint: "http://c:4318", envSampler: "parentbased_traceidratio"},
			wantProtocol: ProtocolHTTPProtobuf, wantSampler: "ParentBased{root:TraceIDRatioBased{1}",
		},
		{
			name: "arg ignored by non-ratio sampler", env: map[string]string{envEndpoint: "http://c:4318", envSampler: "parentbased_always_off", envSamplerArg: "x"},
			wantProtocol: ProtocolHTTPProtobuf, wantSampler: "ParentBased{root:AlwaysOffSampler",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := readConfig(envOf(tt.env), os.ReadFile)
			if err != nil {
				t.Fatalf("readConfig: %v", err)
			}
			if tt.wantOff != "" {
				if !c.off || !strings.Contains(c.offReason, tt.wantOff) {
					t.Fatalf("off=%v reason=%q, want off because of %s", c.off, c.offReason, tt.wantOff)
				}
				return
			}
			if c.off {
				t.Fatalf("off (%s), want on", c.offReason)
			}
			if c.protocol != tt.wantProtocol {
				t.Errorf("protocol %q, want %q", c.protocol, tt.wantProtocol)
			}
			if tt.wantURL != "" && c.endpoint.String() != tt.wantURL {
				t.Errorf("endpoint %q, want %q", c.endpoint, tt.wantURL)
			}
			if !strings.HasPrefix(c.samplerDesc, tt.wantSampler) {
				t.Errorf("sampler %q, want prefix %q", c.samplerDesc, tt.wantSampler)
			}
		})
	}
}

func TestReadConfigExporterOptions(t *testing.T) {
	c, err := readConfig(envOf(map[string]string{
		envEndpoint:       "http://c:4318",
		envHeaders:        "a=general",
		envTracesHeaders:  " api-key = s%20cret ,x-tenant=7,",
		envTimeout:        "10000",
		envTracesTimeout:  "2500",
		envCompression:    "gzip",
		envTracesCompress: "none",
		envSDKDisabled:    "yes",
	}), os.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"api-key": "s cret", "x-tenant": "7"}; !equalMaps(c.headers, want) {
		t.Errorf("headers %v, want %v (the per-signal variable wins)", c.headers, want)
	}
	if c.timeout != 2500*time.Millisecond {
		t.Errorf("timeout %v, want 2.5s", c.timeout)
	}
	if c.gzip {
		t.Error("gzip on, want the per-signal none")
	}
	if len(c.warnings) != 1 || !strings.Contains(c.warnings[0], envSDKDisabled) {
		t.Errorf("warnings %q, want one about %s", c.warnings, envSDKDisabled)
	}
	if c.off {
		t.Error("OTEL_SDK_DISABLED=yes turned tracing off; the specification says only true does")
	}
}

func TestHeaderErrorHidesValue(t *testing.T) {
	_, err := readConfig(envOf(map[string]string{envHeaders: "bad key=hunter2"}), os.ReadFile)
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error %v: want one that does not show the header value", err)
	}
}

// TestResourceMatchesSDK keeps readResource in step with the SDK's
// resource.WithFromEnv on well-formed input.
func TestResourceMatchesSDK(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	t.Setenv(envResourceAttrs, " a=1, b = x%20y%2Cz ,service.namespace=shop,service.name=fromattrs")
	t.Setenv(envServiceName, "svc")

	sdk, err := resource.New(ctx, resource.WithFromEnv())
	if err != nil {
		t.Fatal(err)
	}
	c, err := readConfig(os.Getenv, os.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	res, err := newResource(Options{}, c)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range sdk.Attributes() {
		got, ok := res.Set().Value(kv.Key)
		if !ok || got != kv.Value {
			t.Errorf("%s: ours %q, SDK %q", kv.Key, got.Emit(), kv.Value.Emit())
		}
	}
	if got := keys(sdk.Attributes()); len(got) != 4 {
		t.Errorf("SDK gave %v; the test expects 4 keys", got)
	}
}

func keys(kvs []attribute.KeyValue) []string {
	var out []string
	for _, kv := range kvs {
		out = append(out, string(kv.Key))
	}
	sort.Strings(out)
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestWarnsTLSOnPlainEndpoint(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte(testCA), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := readConfig(envOf(map[string]string{envEndpoint: "http://c:4318", envCertificate: ca}), os.ReadFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.warnings) != 1 || !strings.Contains(c.warnings[0], "https://") {
		t.Fatalf("warnings %q, want one saying TLS needs https://", c.warnings)
	}
}
