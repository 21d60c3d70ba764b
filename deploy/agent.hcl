# Example agent configuration: several listeners, services and routes.
admin         = "127.0.0.1:9070"
snapshot_file = "/var/lib/meshlb/pools.json"
access_log    = true

consul {
  address = "127.0.0.1:8500"
  stale   = false
}

proxy {
  connect_timeout         = "1s"
  response_header_timeout = "60s"
  max_attempts            = 3
}

service "hello" {
  balance      = "round_robin"
  max_fails    = 3
  fail_timeout = "10s"
}

service "api" {
  balance = "least_conn"
}

listener "web" {
  address = ":8070"
  route {
    path_prefix = "/api"
    service     = "api"
  }
  route {
    service = "hello"
    # An RFC 9111 shared cache for this route (see README, Cache).
    cache {
      max_size        = "256MiB"
      max_object_size = "8MiB"
    }
  }
}
