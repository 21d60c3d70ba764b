package discovery

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"
)

func validService() Service {
	return Service{Name: "web", ID: "web-1", Port: 8080, TTL: 5 * time.Second, DeregisterAfter: time.Minute,
		Meta: map[string]string{"pid": "1", "host": "h"}}
}

func TestServiceValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Service)
		want string // "" = valid
	}{
		{"valid", func(*Service) {}, ""},
		{"empty name", func(s *Service) { s.Name = "" }, "service name is empty"},
		{"name with dot", func(s *Service) { s.Name = "a.b" }, `invalid service name "a.b"`},
		{"name ends in dash", func(s *Service) { s.Name = "a-" }, `invalid service name "a-"`},
		{"name too long", func(s *Service) { s.Name = strings.Repeat("a", 64) }, "at most 63"},
		{"port 0", func(s *Service) { s.Port = 0 }, "invalid port 0"},
		{"port 65536", func(s *Service) { s.Port = 65536 }, "invalid port 65536"},
		{"meta key dot", func(s *Service) { s.Meta["a.b"] = "x" }, `invalid meta key "a.b"`},
		{"meta key reserved", func(s *Service) { s.Meta["consul-x"] = "x" }, `"consul-" is reserved`},
		{"meta key long", func(s *Service) { s.Meta[strings.Repeat("k", 129)] = "x" }, "at most 128"},
		{"meta key max", func(s *Service) { s.Meta[strings.Repeat("k", 128)] = "x" }, ""},
		{"meta value long", func(s *Service) { s.Meta["v"] = strings.Repeat("x", 513) }, "at most 512"},
		{"meta value max", func(s *Service) { s.Meta["v"] = strings.Repeat("x", 512) }, ""},
		{"ttl short", func(s *Service) { s.TTL = 10 * time.Millisecond }, "invalid TTL"},
		{"deregister short", func(s *Service) { s.DeregisterAfter = time.Second }, "minimum is 1m"},
		{"too many meta", func(s *Service) {
			for i := range 63 {
				s.Meta[string(rune('a'+i%26))+strings.Repeat("x", i)] = "v"
			}
		}, "at most 64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := validService()
			tc.edit(&s)
			err := s.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// fakeAgent records calls; it forgets everything when reset, as a dev
// agent that restarted empty would.
type fakeAgent struct {
	mu        sync.Mutex
	services  map[string]*api.AgentServiceRegistration
	status    map[string]string
	registers int
	down      bool
}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{services: map[string]*api.AgentServiceRegistration{}, status: map[string]string{}}
}

var errDown = errors.New("dial tcp 127.0.0.1:8500: connect: connection refused")

func (f *fakeAgent) ServiceRegisterOpts(r *api.AgentServiceRegistration, _ api.ServiceRegisterOpts) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	f.registers++
	f.services[r.ID] = r
	f.status[r.Check.CheckID] = r.Check.Status
	return nil
}

func (f *fakeAgent) ServiceDeregisterOpts(id string, _ *api.QueryOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.services, id)
	return nil
}

func (f *fakeAgent) UpdateTTLOpts(checkID, _, status string, _ *api.QueryOptions) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errDown
	}
	if _, ok := f.status[checkID]; !ok {
		return api.StatusError{Code: 404, Body: "Unknown check ID " + checkID}
	}
	f.status[checkID] = status
	return nil
}

func (f *fakeAgent) Service(id string, _ *api.QueryOptions) (*api.AgentService, *api.QueryMeta, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.services[id]; !ok {
		return nil, nil, api.StatusError{Code: 404, Body: "unknown service ID"}
	}
	return &api.AgentService{ID: id}, nil, nil
}

func (f *fakeAgent) get(checkID string) (string, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status[checkID], f.registers
}

func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestRegistrationLoop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	agent := newFakeAgent()
	svc := validService()
	svc.TTL = time.Second
	r := newRegistration(agent, svc, hclog.NewNullLogger())
	loopCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(loopCtx) }()

	waitUntil(t, ctx, "registered critical (starting)", func() bool { s, _ := agent.get(svc.CheckID()); return s == api.HealthCritical })
	r.SetHealth(Health{Status: api.HealthPassing, Output: "ok"})
	waitUntil(t, ctx, "passing pushed", func() bool { s, _ := agent.get(svc.CheckID()); return s == api.HealthPassing })

	// The agent loses its state: the next TTL update fails with 404 and the
	// instance is registered again, with its current health.
	agent.mu.Lock()
	agent.services, agent.status = map[string]*api.AgentServiceRegistration{}, map[string]string{}
	agent.mu.Unlock()
	waitUntil(t, ctx, "re-registered passing", func() bool { s, _ := agent.get(svc.CheckID()); return s == api.HealthPassing })

	// Consul unreachable: no crash, and registered again when it is back.
	agent.mu.Lock()
	agent.down = true
	agent.services, agent.status = map[string]*api.AgentServiceRegistration{}, map[string]string{}
	agent.mu.Unlock()
	waitUntil(t, ctx, "failure noticed", func() bool { ok, err := r.Registered(); return !ok && err != nil })
	agent.mu.Lock()
	agent.down = false
	agent.mu.Unlock()
	waitUntil(t, ctx, "registered after outage", func() bool { s, _ := agent.get(svc.CheckID()); return s == api.HealthPassing })

	stop()
	<-done
	if err := r.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := agent.Service(svc.ID, nil); err == nil {
		t.Fatal("still registered after Deregister")
	}
}

func TestRegBackoffBounds(t *testing.T) {
	b := regBackoff(time.Second)
	for n := 1; n < 20; n++ {
		d := b.Next()
		ceiling := max(250*time.Millisecond<<min(n-1, 10), 0)
		ceiling = min(ceiling, 5*time.Second)
		if d < ceiling/2 || d > ceiling {
			t.Fatalf("regBackoff(%d) = %v, want within [%v, %v]", n, d, ceiling/2, ceiling)
		}
	}
}

func TestIsACLError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{api.StatusError{Code: 403, Body: "Permission denied"}, true},
		{errors.New("Unexpected response code: 403 (ACL not found)"), true},
		{errDown, false},
		{api.StatusError{Code: 500, Body: "boom"}, false},
	} {
		if got := IsACLError(tc.err); got != tc.want {
			t.Errorf("IsACLError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
