# Consul agent for one host. Host 1: server = true, bootstrap_expect = 1.
datacenter = "dc1"
data_dir = "/var/lib/consul"
bind_addr = "10.0.0.2"          # this host's address
client_addr = "127.0.0.1"       # the sidecar talks to its local agent only
retry_join = ["10.0.0.1"]
server = false
disable_update_check = true
disable_anonymous_signature = true
