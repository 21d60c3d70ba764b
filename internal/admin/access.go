package admin

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// allowed reports whether a caller at remote (an "ip:port" as in
// http.Request.RemoteAddr or a gRPC peer address) may use the admin
// listener: loopback callers may, others only from an AllowRemote prefix.
// An address that does not parse is refused.
func (s *Server) allowed(remote string) error {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return fmt.Errorf("caller address %q is not ip:port: refused", remote)
	}
	ip := ap.Addr().Unmap()
	if ip.IsLoopback() {
		return nil
	}
	for _, p := range s.allow {
		if p.Contains(ip) {
			return nil
		}
	}
	return fmt.Errorf("caller %s is not on loopback and not in the allowed networks (AllowRemote): refused", ip)
}

// accessMiddleware refuses callers that are not allowed: a gRPC request
// gets PERMISSION_DENIED as a gRPC status, anything else a 403.
func (s *Server) accessMiddleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := s.allowed(r.RemoteAddr)
		if err == nil {
			next.ServeHTTP(w, r)
			return
		}
		s.log.Warn("admin request refused", "remote", r.RemoteAddr, "path", r.URL.Path)
		if isGRPC(r) {
			// A trailers-only gRPC response: the status travels in the
			// headers of a response without a body.
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", fmt.Sprint(int(codes.PermissionDenied)))
			w.Header().Set("Grpc-Message", encodeGRPCMessage(err.Error()))
			w.WriteHeader(http.StatusOK)
			return
		}
		http.Error(w, err.Error(), http.StatusForbidden)
	})
}

// encodeGRPCMessage percent-encodes a grpc-message header value as the
// gRPC HTTP/2 protocol asks (printable ASCII except '%' is kept).
func encodeGRPCMessage(msg string) string {
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// peerError checks the gRPC peer of ctx. The interceptors repeat the HTTP
// middleware's check so that the gRPC server stays closed to remote callers
// even if it is ever served on its own listener.
func (s *Server) peerError(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return status.Error(codes.PermissionDenied, "caller address unknown: refused")
	}
	if err := s.allowed(p.Addr.String()); err != nil {
		s.log.Warn("admin call refused", "remote", p.Addr.String())
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return nil
}

func (s *Server) unaryAccess(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.peerError(ctx); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) streamAccess(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := s.peerError(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}
