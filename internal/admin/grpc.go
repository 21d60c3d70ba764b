package admin

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshlb/meshlb/internal/admin/adminpb"
	"github.com/meshlb/meshlb/lb"
)

// adminService implements meshlb.admin.v1.Admin.
type adminService struct {
	adminpb.UnimplementedAdminServer
	s *Server
}

// ListPools returns the pools of the requested services.
func (a *adminService) ListPools(_ context.Context, req *adminpb.ListPoolsRequest) (*adminpb.ListPoolsResponse, error) {
	svcs, err := a.s.lookup(req.GetServices())
	if err != nil {
		return nil, err
	}
	return a.s.listPools(svcs), nil
}

// WatchPools streams the pool events of the requested services until the
// client goes away or the server stops. A watcher that falls more than the
// ring's 200 events behind skips the events it missed (a jump in seq).
func (a *adminService) WatchPools(req *adminpb.WatchPoolsRequest, stream adminpb.Admin_WatchPoolsServer) error {
	svcs, err := a.s.lookup(req.GetServices())
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, svc := range svcs {
		want[svc.Name] = true
	}
	ctx := stream.Context()
	evs, last, changed := a.s.eventsAfter(req.GetAfterSeq())
	if !req.GetReplay() {
		evs = nil
	}
	for {
		for _, ev := range evs {
			if len(want) > 0 && !want[ev.Service] {
				continue
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-a.s.done:
			return status.Error(codes.Unavailable, "the agent is shutting down")
		case <-changed:
		}
		evs, last, changed = a.s.eventsAfter(last)
	}
}

// Drain marks an instance as draining at this agent.
func (a *adminService) Drain(_ context.Context, req *adminpb.DrainRequest) (*adminpb.DrainResponse, error) {
	in, changed, err := a.s.setDraining(req.GetService(), req.GetInstanceId(), true)
	if err != nil {
		return nil, err
	}
	return &adminpb.DrainResponse{Instance: in, Changed: changed}, nil
}

// Undrain clears an instance's draining mark at this agent.
func (a *adminService) Undrain(_ context.Context, req *adminpb.UndrainRequest) (*adminpb.UndrainResponse, error) {
	in, changed, err := a.s.setDraining(req.GetService(), req.GetInstanceId(), false)
	if err != nil {
		return nil, err
	}
	return &adminpb.UndrainResponse{Instance: in, Changed: changed}, nil
}

// lookup resolves service names (none means every service) or returns a
// NotFound status naming the first unknown one.
func (s *Server) lookup(names []string) ([]*Service, error) {
	var svcs []*Service
	for _, n := range names {
		svc := s.service(n)
		if svc == nil {
			return nil, status.Errorf(codes.NotFound, "service %q is not served by this agent (it serves: %s)",
				n, strings.Join(s.serviceNames(), ", "))
		}
		svcs = append(svcs, svc)
	}
	return svcs, nil
}

// setDraining drains or undrains instance id of service, which may be empty
// when the ID is unique across services. It reports the instance after the
// change and whether anything changed.
func (s *Server) setDraining(service, id string, on bool) (*adminpb.Instance, bool, error) {
	if id == "" {
		return nil, false, status.Error(codes.InvalidArgument, "instance_id is empty: name the instance (its Consul service ID)")
	}
	svc, in, err := s.findInstance(service, id)
	if err != nil {
		return nil, false, err
	}
	was := in.Stats.Draining.Load()
	if err := svc.Balancer.SetDraining(id, on); err != nil {
		if errors.Is(err, lb.ErrUnknownInstance) {
			// It left the pool since we looked.
			return nil, false, status.Errorf(codes.NotFound, "instance %q is not in the pool of service %q", id, svc.Name)
		}
		return nil, false, status.Errorf(codes.Internal, "set draining of %q: %v", id, err)
	}
	s.log.Info(pick(on, "instance drained by operator", "instance undrained by operator"),
		"service", svc.Name, "instance", id)
	s.requestPoll()
	return instanceProto(in, time.Now()), was != on, nil
}

// findInstance finds instance id in service's pool or, if service is empty,
// in the one pool that has it.
func (s *Server) findInstance(service, id string) (*Service, *lb.Instance, error) {
	if service != "" {
		svc := s.service(service)
		if svc == nil {
			return nil, nil, status.Errorf(codes.NotFound, "service %q is not served by this agent (it serves: %s)",
				service, strings.Join(s.serviceNames(), ", "))
		}
		if in := findIn(svc.Balancer.Pool(), id); in != nil {
			return svc, in, nil
		}
		return nil, nil, status.Errorf(codes.NotFound, "instance %q is not in the pool of service %q", id, service)
	}
	var (
		found   *Service
		foundIn *lb.Instance
		names   []string
	)
	for i := range s.services {
		if in := findIn(s.services[i].Balancer.Pool(), id); in != nil {
			found, foundIn = &s.services[i], in
			names = append(names, s.services[i].Name)
		}
	}
	switch len(names) {
	case 0:
		return nil, nil, status.Errorf(codes.NotFound, "instance %q is not in the pool of any service of this agent", id)
	case 1:
		return found, foundIn, nil
	default:
		return nil, nil, status.Errorf(codes.InvalidArgument, "instance %q is in the pools of services %s: name the service",
			id, strings.Join(names, ", "))
	}
}

func findIn(p *lb.Pool, id string) *lb.Instance {
	if p == nil {
		return nil
	}
	i, ok := slices.BinarySearchFunc(p.Instances, id, func(in *lb.Instance, id string) int {
		return strings.Compare(in.ID, id)
	})
	if !ok {
		return nil
	}
	return p.Instances[i]
}
