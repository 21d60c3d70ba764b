# Consul server agent for a real cluster (run 3 or 5 of these).
# Copy to /etc/consul.d/server.hcl and adjust datacenter, bind/advertise
# addresses and retry_join.
datacenter       = "dc1"
data_dir         = "/var/lib/consul"
server           = true
bootstrap_expect = 3
bind_addr        = "{{ GetPrivateIP }}"
client_addr      = "127.0.0.1"
retry_join       = ["consul-1.internal", "consul-2.internal", "consul-3.internal"]
ui_config {
  enabled = true
}
acl {
  enabled                  = true
  default_policy           = "deny"
  enable_token_persistence = true
}
performance {
  raft_multiplier = 1
}
