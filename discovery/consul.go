package discovery

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ClientOptions override what consul/api's DefaultConfig reads from the
// standard CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE,
// CONSUL_CACERT, CONSUL_HTTP_SSL … variables. Empty fields keep the
// environment's value.
type ClientOptions struct {
	Address   string
	Token     string
	TokenFile string
	// Watchers is how many Watchers will share the client (one long poll
	// each); the connection pool is sized for them.
	Watchers int
}

// NewClient returns a Consul API client configured from the standard
// environment, with opts overriding it.
func NewClient(opts ClientOptions) (*api.Client, error) {
	cfg := api.DefaultConfig()
	if opts.Address != "" {
		cfg.Address = opts.Address
	}
	if opts.TokenFile != "" {
		b, err := os.ReadFile(opts.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading consul token file %q: %w", opts.TokenFile, err)
		}
		cfg.Token = strings.TrimSpace(string(b))
		cfg.TokenFile = ""
	}
	if opts.Token != "" {
		cfg.Token = opts.Token
		cfg.TokenFile = ""
	}
	ConfigureTransport(cfg, opts.Watchers)
	// Health reads decode the lean way (leanread.go): the transport
	// must be ours. consul/api would make the same client from these.
	if cfg.HttpClient == nil {
		hc, err := api.NewHttpClient(cfg.Transport, cfg.TLSConfig)
		if err != nil {
			return nil, fmt.Errorf("consul client for %q: %w", cfg.Address, err)
		}
		cfg.HttpClient = hc
	}
	wrapLean(cfg.HttpClient)
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client for %q: %w", cfg.Address, err)
	}
	return c, nil
}

// IsACLError reports whether err is Consul refusing the request's token
// (403 "Permission denied", "ACL not found"), as opposed to Consul being
// unreachable or failing. Callers report such errors as ACL problems,
// naming what was being done, never as a generic failure.
func IsACLError(err error) bool {
	if err == nil {
		return false
	}
	var se api.StatusError
	if errors.As(err, &se) && se.Code == 403 {
		return true
	}
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "permission denied") || strings.Contains(msg, "acl not found") ||
		strings.Contains(msg, "403 (")
}
