package consultest

import (
	"github.com/hashicorp/consul/api"
)

// ManagementToken is the bootstrap (management) token of NewACL agents.
const ManagementToken = "d9f1a8c6-3b2e-4f5a-9c7d-1e2f3a4b5c6d"

// NewACL starts a dev agent with ACLs on and default deny, and returns it
// with a management client. Like a real client agent it has an agent token
// of its own (here the management token) for its own catalog syncs.
func NewACL(t TB) (*Server, *api.Client) {
	t.Helper()
	srv := New(t, Options{ExtraHCL: `acl {
  enabled = true
  default_policy = "deny"
  tokens {
    initial_management = "` + ManagementToken + `"
    agent = "` + ManagementToken + `"
  }
}`})
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token = srv.HTTPAddr, ManagementToken
	mgmt, err := api.NewClient(cfg)
	if err != nil {
		t.Fatalf("consultest: %v", err)
	}
	return srv, mgmt
}

// Token creates a token with a policy of the given rules and returns its secret.
func Token(t TB, mgmt *api.Client, name, rules string) string {
	t.Helper()
	pol, _, err := mgmt.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		t.Fatalf("consultest: policy %s: %v", name, err)
	}
	tok, _, err := mgmt.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatalf("consultest: token %s: %v", name, err)
	}
	return tok.SecretID
}
