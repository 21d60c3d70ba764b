package discovery

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/consul/api"

	"github.com/meshlb/meshlb/lb"
)

// Followed is one service to follow and what to call with its pools.
type Followed struct {
	Watch    WatchConfig
	OnUpdate func([]lb.Instance)
}

// Follower follows a set of services and chooses how: up to HubThreshold
// services, a Watcher each with its own long poll (a change lands in one
// round trip); above, one Hub for them all, so the connections to Consul
// stay bounded (Consul refuses more than 200 from one client by default).
// Either way each service has a Watcher, for its status.
type Follower struct {
	hub      *Hub
	watchers []*Watcher
}

// NewFollower returns a follower of services through client; Run starts
// it. hub configures the hub, used only above HubThreshold services; its
// Datacenter is taken from the services' (they must all name the same one,
// or none). Every service is checked as NewWatcher checks it, and the error
// names the one refused.
func NewFollower(client *api.Client, hub HubConfig, services []Followed) (*Follower, error) {
	if client == nil {
		return nil, errors.New("follower needs a consul client, got nil")
	}
	f := &Follower{}
	if len(services) > HubThreshold {
		hub.Datacenter = services[0].Watch.Datacenter
		h, err := newHub(client.Health(), client.Health(), client.Catalog(), hub)
		if err != nil {
			return nil, err
		}
		f.hub = h
	}
	for _, s := range services {
		var (
			w   *Watcher
			err error
		)
		if f.hub != nil {
			w, err = f.hub.Add(s.Watch, s.OnUpdate)
		} else {
			w, err = newWatcher(client.Health(), s.Watch, s.OnUpdate)
		}
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", s.Watch.Service, err)
		}
		f.watchers = append(f.watchers, w)
	}
	return f, nil
}

// Watchers returns the services' watchers, in the order given.
func (f *Follower) Watchers() []*Watcher { return f.watchers }

// Hub is true when one hub follows the services.
func (f *Follower) Hub() bool { return f.hub != nil }

// Run follows the services until ctx is done and returns ctx.Err(). Call it
// once.
func (f *Follower) Run(ctx context.Context) error {
	if f.hub != nil {
		return f.hub.Run(ctx)
	}
	var wg sync.WaitGroup
	for _, w := range f.watchers {
		wg.Add(1)
		go func() { defer wg.Done(); _ = w.Run(ctx) }()
	}
	wg.Wait()
	return ctx.Err()
}
