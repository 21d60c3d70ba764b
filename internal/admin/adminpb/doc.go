// Package adminpb is the generated protobuf and gRPC code of the agent's
// admin API (meshlb.admin.v1, admin.proto). Do not edit the .pb.go files:
// edit admin.proto and run `make generate`.
package adminpb
