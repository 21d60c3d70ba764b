package admin

import (
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
	"github.com/meshlb/meshlb/internal/wire"
	"github.com/meshlb/meshlb/lb"
)

func ejected(in *lb.Instance, now time.Time) bool {
	return in.Stats != nil && in.Stats.Ejected(now)
}

func draining(in *lb.Instance) bool {
	return in.Stats != nil && in.Stats.Draining.Load()
}

// instanceState is what the balancer does with in at now. Draining wins
// over ejected: it is the operator's decision and outlasts the ejection.
func instanceState(in *lb.Instance, now time.Time) adminpb.InstanceState {
	switch {
	case draining(in):
		return adminpb.InstanceState_INSTANCE_STATE_DRAINING
	case ejected(in, now):
		return adminpb.InstanceState_INSTANCE_STATE_EJECTED
	default:
		return adminpb.InstanceState_INSTANCE_STATE_SERVING
	}
}

// instanceProto describes in with its counters read at now.
func instanceProto(in *lb.Instance, now time.Time) *adminpb.Instance {
	pi := &adminpb.Instance{
		Id:      in.ID,
		Address: in.HostPort,
		Pid:     in.Meta[wire.MetaPID],
		Host:    in.Meta[wire.MetaHost],
		State:   instanceState(in, now),
		Weight:  int32(min(in.Weight, 1<<30)),
		Tags:    in.Tags,

		Datacenter: in.Datacenter,
		Backup:     in.Backup,
	}
	if st := in.Stats; st != nil {
		pi.InFlight = st.InFlight.Load()
		pi.Requests = st.Requests.Load()
		pi.Failures = st.Failures.Load()
		pi.ConsecutiveFailures = st.ConsecFails.Load()
		if l := st.Latency(now); l > 0 {
			pi.EwmaLatency = durationpb.New(l)
		}
		if u := st.EjectedUntil.Load(); u > now.UnixNano() {
			pi.EjectedUntil = timestamppb.New(time.Unix(0, u))
		}
	}
	return pi
}

// poolProto describes svc's current pool.
func poolProto(svc *Service, now time.Time) *adminpb.Pool {
	pp := &adminpb.Pool{Service: svc.Name, Policy: svc.Balancer.Policy()}
	if p := svc.Balancer.Pool(); p != nil {
		pp.HasPool = true
		pp.Version = p.Version
		pp.Updated = timestamppb.New(p.Updated)
		pp.Instances = make([]*adminpb.Instance, len(p.Instances))
		for i, in := range p.Instances {
			pp.Instances[i] = instanceProto(in, now)
		}
		pp.Tiers, pp.Serving = tiersProto(svc.Balancer, p)
	}
	if svc.Status != nil {
		w := svc.Status()
		pw := &adminpb.WatchInfo{LastError: w.LastError, Errors: w.Errors, Index: w.Index}
		if !w.LastSuccess.IsZero() {
			pw.LastSuccess = timestamppb.New(w.LastSuccess)
		}
		pp.Watch = pw
	}
	return pp
}

// listPools describes the pools of the given services (all if none), and
// the last event's sequence number, read before the pools so that a watch
// continuing from it misses nothing.
func (s *Server) listPools(svcs []*Service) *adminpb.ListPoolsResponse {
	resp := &adminpb.ListPoolsResponse{LastEventSeq: s.lastSeq()}
	now := time.Now()
	if len(svcs) == 0 {
		for i := range s.services {
			svcs = append(svcs, &s.services[i])
		}
	}
	for _, svc := range svcs {
		resp.Pools = append(resp.Pools, poolProto(svc, now))
	}
	return resp
}

// tiersProto describes the pool's tiers and the one serving.
func tiersProto(b *lb.Balancer, p *lb.Pool) ([]*adminpb.Tier, *adminpb.Serving) {
	infos := p.Tiers()
	tiers := make([]*adminpb.Tier, len(infos))
	for i, t := range infos {
		tiers[i] = &adminpb.Tier{Datacenter: t.Datacenter, Backup: t.Backup, Remote: t.Remote, Instances: int32(min(t.Size, 1<<30))}
	}
	s := b.Serving()
	ps := &adminpb.Serving{Tier: s.Tier.Name(), Datacenter: s.Tier.Datacenter, Remote: s.Tier.Remote,
		Index: int32(s.Index), Reason: s.Reason, Switches: s.Switches}
	if !s.Since.IsZero() {
		ps.Since = timestamppb.New(s.Since)
	}
	return tiers, ps
}
