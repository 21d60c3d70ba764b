package agentconfig

import (
	"io"
	"strings"
	"testing"
)

func TestCacheConfig(t *testing.T) {
	write := func(t *testing.T, body string) string {
		t.Helper()
		c := &Config{}
		if err := c.loadBytes("t.hcl", []byte(body)); err != nil {
			return err.Error()
		}
		return ""
	}
	t.Run("sizes", func(t *testing.T) {
		for in, want := range map[string]int64{"256m": 256 << 20, "256MiB": 256 << 20, "8mib": 8 << 20,
			"1g": 1 << 30, "1GiB": 1 << 30, "512k": 512 << 10, "512KiB": 512 << 10, "1048576": 1 << 20} {
			if got, err := parseSize(in); err != nil || got != want {
				t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
			}
		}
		for _, in := range []string{"", "1.5m", "-1m", "1t", "m", "12 MB"} {
			if _, err := parseSize(in); err == nil {
				t.Errorf("parseSize(%q): no error", in)
			}
		}
	})
	t.Run("--cache", func(t *testing.T) {
		c, err := Parse([]string{"--listen", ":0", "--service", "s", "--cache", "64MiB"}, io.Discard)
		if err != nil || c.Listeners[0].Cache == nil || c.Listeners[0].Cache.MaxSize != 64<<20 {
			t.Fatalf("--cache 64MiB: %+v, %v", c, err)
		}
		c, err = Parse([]string{"--listen", ":0", "--service", "s"}, io.Discard)
		if err != nil || c.Listeners[0].Cache != nil {
			t.Fatalf("no --cache: a cache anyway (%v)", err)
		}
		for _, v := range []string{"lots", "1k", "0"} {
			_, err := Parse([]string{"--listen", ":0", "--service", "s", "--cache", v}, io.Discard)
			if err == nil || !strings.Contains(err.Error(), `--cache "`+v+`"`) {
				t.Errorf("--cache %s: error %v, want one naming the value", v, err)
			}
		}
	})
	t.Run("--consul-cached and its deprecated alias", func(t *testing.T) {
		for _, f := range []string{"--consul-cached", "--cached"} {
			c, err := Parse([]string{"--listen", ":0", "--service", "s", f}, io.Discard)
			if err != nil || !c.Cached {
				t.Fatalf("%s: cached %v, %v", f, c != nil && c.Cached, err)
			}
			if dep := len(c.Deprecated) > 0; dep != (f == "--cached") {
				t.Errorf("%s: deprecation warnings %q", f, c.Deprecated)
			}
		}
		c := &Config{}
		if err := c.loadBytes("t.hcl", []byte(`consul { cached = true }`)); err != nil || !c.Cached || len(c.Deprecated) != 1 {
			t.Fatalf("consul { cached }: %v %v %q", c.Cached, err, c.Deprecated)
		}
		c = &Config{}
		if err := c.loadBytes("t.hcl", []byte(`consul { consul_cached = true }`)); err != nil || !c.Cached || len(c.Deprecated) != 0 {
			t.Fatalf("consul { consul_cached }: %v %v %q", c.Cached, err, c.Deprecated)
		}
	})
	t.Run("HCL blocks", func(t *testing.T) {
		c := &Config{}
		err := c.loadBytes("t.hcl", []byte(`
listener "web" {
  address = ":0"
  cache {
    max_size        = "256MiB"
    max_object_size = "8MiB"
  }
  route { service = "a" }
  route {
    service = "b"
    path_prefix = "/b"
    cache { max_size = "1g" }
  }
}`))
		if err != nil {
			t.Fatal(err)
		}
		l := c.Listeners[0]
		if l.Cache.MaxSize != 256<<20 || l.Cache.MaxObjectSize != 8<<20 || l.Routes[0].Cache != nil ||
			l.Routes[1].Cache.MaxSize != 1<<30 || l.Routes[1].Cache.MaxObjectSize != 0 {
			t.Fatalf("listener cache %+v, routes %+v %+v", l.Cache, l.Routes[0].Cache, l.Routes[1].Cache)
		}
		for body, want := range map[string]string{
			"listener \"w\" {\naddress = \":0\"\ncache { max_size = \"huge\" }\nroute { service = \"a\" }\n}":                            `listener "w": invalid cache max_size "huge"`,
			"listener \"w\" {\naddress = \":0\"\ncache {\nmax_size = \"1m\"\nmax_object_size = \"2m\"\n}\nroute { service = \"a\" }\n}":  `larger than max_size`,
			"listener \"w\" {\naddress = \":0\"\nroute {\nservice = \"a\"\ncache {\nmax_size = \"1m\"\nmax_object_size = \"x\"\n}\n}\n}": `route "a": invalid cache max_object_size "x"`,
			"listener \"w\" {\naddress = \":0\"\nroute {\nservice = \"a\"\ncache { max_object_size = \"1m\" }\n}\n}":                     `max_size`,
			"listener \"w\" {\naddress = \":0\"\ncache { max_size = \"1k\" }\nroute { service = \"a\" }\n}":                              `at least 64KiB`,
		} {
			if got := write(t, body); !strings.Contains(got, want) {
				t.Errorf("%s:\n  error %q, want it to contain %q", body, got, want)
			}
		}
	})
}
