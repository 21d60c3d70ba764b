package admin

import (
	"strings"
	"time"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
)

// The views are the JSON shapes of the status page's API and of
// `agent status --json`: plain names and numbers rather than protojson's
// (which writes 64-bit integers as strings), one shape for both.

// PoolView is a service's pool.
type PoolView struct {
	Service   string         `json:"service"`
	Policy    string         `json:"policy"`
	HasPool   bool           `json:"has_pool"`
	Version   uint64         `json:"version"`
	Updated   *time.Time     `json:"updated,omitempty"`
	Instances []InstanceView `json:"instances"`
	Watch     *WatchView     `json:"watch,omitempty"`
	Serving   *ServingView   `json:"serving,omitempty"`
	Tiers     []TierView     `json:"tiers,omitempty"`
}

// ServingView is the tier new requests go to ("primary" or "backup"), in
// which datacenter, since when and why.
type ServingView struct {
	Tier       string     `json:"tier"`
	Datacenter string     `json:"datacenter,omitempty"`
	Remote     bool       `json:"remote"`
	Index      int32      `json:"index"`
	Since      *time.Time `json:"since,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	Switches   uint64     `json:"switches"`
}

// TierView is one tier of a pool.
type TierView struct {
	Datacenter string `json:"datacenter,omitempty"`
	Backup     bool   `json:"backup"`
	Remote     bool   `json:"remote"`
	Instances  int32  `json:"instances"`
}

// WatchView is the state of a pool's discovery watch.
type WatchView struct {
	LastSuccess *time.Time `json:"last_success,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	Errors      uint64     `json:"errors"`
	Index       uint64     `json:"index"`
}

// InstanceView is an instance with its counters. State is "serving",
// "ejected" or "draining"; EWMAMillis is the latency EWMA in milliseconds.
type InstanceView struct {
	ID                  string     `json:"id"`
	Address             string     `json:"address"`
	PID                 string     `json:"pid,omitempty"`
	Host                string     `json:"host,omitempty"`
	State               string     `json:"state"`
	InFlight            int64      `json:"in_flight"`
	Requests            uint64     `json:"requests"`
	Failures            uint64     `json:"failures"`
	EWMAMillis          float64    `json:"ewma_ms"`
	Weight              int32      `json:"weight"`
	Tags                []string   `json:"tags,omitempty"`
	ConsecutiveFailures int32      `json:"consecutive_failures"`
	EjectedUntil        *time.Time `json:"ejected_until,omitempty"`
	Datacenter          string     `json:"datacenter,omitempty"`
	Backup              bool       `json:"backup,omitempty"`
}

// EventView is a pool change. Kind is "joined", "left", "ejected",
// "unejected", "draining" or "undrained".
type EventView struct {
	Seq      uint64       `json:"seq"`
	Time     time.Time    `json:"time"`
	Service  string       `json:"service"`
	Kind     string       `json:"kind"`
	Instance InstanceView `json:"instance"`
}

// FailureView is a failed request.
type FailureView struct {
	Time     time.Time `json:"time"`
	Service  string    `json:"service"`
	Instance string    `json:"instance"`
	TraceID  string    `json:"trace_id,omitempty"`
	TraceURL string    `json:"trace_url,omitempty"`
	Status   int       `json:"status"`
}

// PoolsView is ListPools' answer.
type PoolsView struct {
	Pools        []PoolView `json:"pools"`
	LastEventSeq uint64     `json:"last_event_seq"`
}

// ViewPools converts ListPools' answer.
func ViewPools(r *adminpb.ListPoolsResponse) PoolsView {
	v := PoolsView{Pools: make([]PoolView, 0, len(r.GetPools())), LastEventSeq: r.GetLastEventSeq()}
	for _, p := range r.GetPools() {
		v.Pools = append(v.Pools, ViewPool(p))
	}
	return v
}

// ViewPool converts a pool.
func ViewPool(p *adminpb.Pool) PoolView {
	v := PoolView{
		Service:   p.GetService(),
		Policy:    p.GetPolicy(),
		HasPool:   p.GetHasPool(),
		Version:   p.GetVersion(),
		Instances: make([]InstanceView, 0, len(p.GetInstances())),
	}
	if p.GetUpdated() != nil {
		t := p.GetUpdated().AsTime()
		v.Updated = &t
	}
	for _, in := range p.GetInstances() {
		v.Instances = append(v.Instances, ViewInstance(in))
	}
	if w := p.GetWatch(); w != nil {
		v.Watch = &WatchView{LastError: w.GetLastError(), Errors: w.GetErrors(), Index: w.GetIndex()}
		if w.GetLastSuccess() != nil {
			t := w.GetLastSuccess().AsTime()
			v.Watch.LastSuccess = &t
		}
	}
	if sv := p.GetServing(); sv != nil {
		v.Serving = &ServingView{Tier: sv.GetTier(), Datacenter: sv.GetDatacenter(), Remote: sv.GetRemote(),
			Index: sv.GetIndex(), Reason: sv.GetReason(), Switches: sv.GetSwitches()}
		if sv.GetSince() != nil {
			t := sv.GetSince().AsTime()
			v.Serving.Since = &t
		}
	}
	for _, t := range p.GetTiers() {
		v.Tiers = append(v.Tiers, TierView{Datacenter: t.GetDatacenter(), Backup: t.GetBackup(), Remote: t.GetRemote(), Instances: t.GetInstances()})
	}
	return v
}

// ViewInstance converts an instance.
func ViewInstance(in *adminpb.Instance) InstanceView {
	v := InstanceView{
		ID:                  in.GetId(),
		Address:             in.GetAddress(),
		PID:                 in.GetPid(),
		Host:                in.GetHost(),
		State:               StateName(in.GetState()),
		InFlight:            in.GetInFlight(),
		Requests:            in.GetRequests(),
		Failures:            in.GetFailures(),
		Weight:              in.GetWeight(),
		Tags:                in.GetTags(),
		ConsecutiveFailures: in.GetConsecutiveFailures(),
		Datacenter:          in.GetDatacenter(),
		Backup:              in.GetBackup(),
	}
	if d := in.GetEwmaLatency(); d != nil {
		v.EWMAMillis = float64(d.AsDuration().Microseconds()) / 1000
	}
	if u := in.GetEjectedUntil(); u != nil {
		t := u.AsTime()
		v.EjectedUntil = &t
	}
	return v
}

// ViewEvent converts a pool event.
func ViewEvent(ev *adminpb.PoolEvent) EventView {
	return EventView{
		Seq:      ev.GetSeq(),
		Time:     ev.GetTime().AsTime(),
		Service:  ev.GetService(),
		Kind:     KindName(ev.GetKind()),
		Instance: ViewInstance(ev.GetInstance()),
	}
}

// StateName is the short lowercase name of an instance state ("serving").
func StateName(st adminpb.InstanceState) string {
	return shortName(st.String(), "INSTANCE_STATE_")
}

// KindName is the short lowercase name of an event kind ("joined").
func KindName(k adminpb.PoolEvent_Kind) string {
	return shortName(k.String(), "KIND_")
}

func shortName(enum, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(enum, prefix))
}
