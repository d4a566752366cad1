-- Prosody for the benchmark: loopback only, plain c2s (no TLS: the load generator speaks plain
-- XMPP on loopback), no rate limits, offline storage on (Prosody's default file store).
-- BENCH_DIR is replaced by bench/run with the run's own directory.
daemonize = false
run_as_root = true
pidfile = "BENCH_DIR/prosody.pid"
data_path = "BENCH_DIR/data"
log = { warn = "BENCH_DIR/prosody.log" }
c2s_ports = { 15223 }
c2s_interfaces = { "127.0.0.1" }
interfaces = { "127.0.0.1" }
s2s_ports = {}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
limits = {}
allow_registration = true
min_seconds_between_registrations = 0
registration_throttle_max = 1000000
modules_enabled = { "roster", "saslauth", "disco", "ping", "offline", "register", "posix" }
modules_disabled = { "s2s", "tls", "limits" }
VirtualHost "localhost"
