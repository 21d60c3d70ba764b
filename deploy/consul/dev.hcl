# Consul dev agent for meshlb's demo and local development: loopback only,
# no DNS or gRPC listeners (meshlb uses the HTTP API only).
bind_addr   = "127.0.0.1"
client_addr = "127.0.0.1"
log_level   = "warn"
ports {
  dns      = -1
  grpc     = -1
  grpc_tls = -1
}
ui_config {
  enabled = true
}
