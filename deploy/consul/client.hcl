# Consul client agent for every host that runs app instances (registrars
# talk to it on 127.0.0.1:8500) or an edge agent. Copy to
# /etc/consul.d/client.hcl; set retry_join to your servers.
datacenter  = "dc1"
data_dir    = "/var/lib/consul"
server      = false
bind_addr   = "{{ GetPrivateIP }}"
client_addr = "127.0.0.1"
retry_join  = ["consul-1.internal", "consul-2.internal", "consul-3.internal"]
acl {
  enabled        = true
  default_policy = "deny"
  tokens {
    # agent token: node:write on this node, service:read
    agent = ""
  }
}
# The health endpoint uses Consul's streaming backend for ?cached blocking
# queries (the agent's --cached flag).
use_streaming_backend = true
