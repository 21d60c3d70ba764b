package proxy

import (
	"context"
	"testing"

	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// BenchmarkGRPCUnary measures a small unary gRPC call from one client
// connection, straight to the instance and through the proxy (h2c both
// sides). allocs/op count both ends, the gRPC client and server included.
func BenchmarkGRPCUnary(b *testing.B) {
	g := newGRPCInstance(b, "g0")
	a := newAgentServer(b, Config{}, ServerConfig{}, nil, Route{Balancer: newBalancer(b, "greeter", g.instance())})
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hello")}}
	for _, c := range []struct{ name, addr string }{{"direct", g.addr}, {"proxied", a.addr}} {
		b.Run(c.name, func(b *testing.B) {
			client := dialGRPC(b, c.addr)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := client.UnaryCall(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
