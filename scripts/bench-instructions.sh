#!/usr/bin/env bash
# User-space instructions per request, counted by valgrind's callgrind: a figure that
# does not move with the machine's noise, for comparing builds (and nginx) one change
# at a time. It counts no kernel work and no waiting, so it complements, never replaces,
# the throughput of scripts/bench-gateway.sh.
#
#   scripts/bench-instructions.sh BINARY... [-- REQUESTS]
#   scripts/bench-instructions.sh target/release/ratewarden /tmp/older-ratewarden -- 4000
#
# For each set-up (all allowed; nearly all rejected) and each binary, and for nginx's
# limit_req with the same rule: the limiter runs under callgrind in front of an nginx
# upstream answering 200; 500 warm-up requests go first, the counters are zeroed
# (callgrind_control -z), REQUESTS requests (default 4000) are sent over 10 keep-alive
# connections, and the counters are dumped. nginx runs as one process
# (master_process off), ratewarden with its usual worker threads.
#
# With FLOOR set, the rejected set-up also counts crates/ratewarden/examples/hyper_floor.rs
# (the gateway's 429 answered by hyper and tokio alone) in each of its server set-ups,
# and the allowed set-up counts it passing every request upstream untouched (hyper's
# server and client alone): what is left between it and ratewarden is the gateway's
# own work.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
BINARIES=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do BINARIES+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
REQUESTS=${1:-4000}
[ ${#BINARIES[@]} -gt 0 ] || { echo "usage: $0 BINARY... [-- REQUESTS]" >&2; exit 2; }
ensure nginx valgrind -- nginx valgrind
bench_workdir
UPSTREAM=$(free_port)
ok_nginx "$UPSTREAM"

# count LABEL PORT COMMAND... -> "LABEL|instructions per request|statuses"
count() {
  local label=$1 port=$2
  shift 2
  local out="$WORK/callgrind.$port"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$WORK/$port.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$WORK/$port.pid"
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  python3 scripts/bench_requests.py "$port" 500 >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local statuses
  statuses=$(python3 scripts/bench_requests.py "$port" "$REQUESTS")
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # Every dump after the zeroing, all threads: the requests' instructions.
  local total
  total=$(cat "$out".* 2>/dev/null | awk '/^summary:/ {s += $2} END {print s + 0}')
  echo "$label|$((total / REQUESTS))|$statuses"
}

nginx_conf() { # port rate burst
  local burst=""
  [ "$3" != 0 ] && burst="burst=$3 nodelay"
  cat >"$WORK/limit-$1.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/limit-$1.nginx.pid;
error_log /dev/null crit;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/lb; proxy_temp_path $WORK/lp;
  fastcgi_temp_path $WORK/lf; uwsgi_temp_path $WORK/lu; scgi_temp_path $WORK/ls;
  upstream api { server 127.0.0.1:$UPSTREAM; keepalive 128; }
  limit_req_zone \$binary_remote_addr zone=z:10m rate=$2;
  limit_req_status 429;
  server { listen 127.0.0.1:$1;
    location / { limit_req zone=z $burst; proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
  echo "$WORK/limit-$1.conf"
}
ratewarden_conf() { # port rate burst
  bench_ratewarden_toml "$WORK/rw-$1.toml" "$1" "$UPSTREAM" "$2" "$3"
  echo "$WORK/rw-$1.toml"
}

ROWS=()
for setup in "all allowed|1000000r/s|1000000/s|1000000" "nearly all rejected|1r/m|1/m|1"; do
  IFS='|' read -r name nginx_rate rate burst <<<"$setup"
  P=$(free_port)
  ROWS+=("$(count "nginx limit_req, $name" "$P" "$NGINX" -c "$(nginx_conf "$P" "$nginx_rate" "$([ "$burst" = 1 ] && echo 0 || echo "$burst")")")")
  for binary in "${BINARIES[@]}"; do
    P=$(free_port)
    ROWS+=("$(RUST_LOG=warn count "$binary, $name" "$P" "$binary" serve --config "$(ratewarden_conf "$P" "$rate" "$burst")")")
  done
done
if [ -n "${FLOOR:-}" ]; then
  cargo build -q --release -p ratewarden --example hyper_floor
  for server in http1 http1-timeout auto; do
    P=$(free_port)
    ROWS+=("$(count "hyper_floor --server $server, nearly all rejected" "$P" target/release/examples/hyper_floor --listen "127.0.0.1:$P" --server "$server")")
  done
  P=$(free_port)
  ROWS+=("$(count "hyper_floor --upstream, all allowed" "$P" target/release/examples/hyper_floor --listen "127.0.0.1:$P" --upstream "127.0.0.1:$UPSTREAM")")
fi

echo "callgrind, $REQUESTS requests after 500 warm-up, 10 keep-alive connections; $(valgrind --version); nginx $("$NGINX" -v 2>&1 | cut -d/ -f2); $(date -u +%Y-%m-%d)"
echo
echo "| set-up | instructions per request | statuses |"
echo "|---|---|---|"
for row in "${ROWS[@]}"; do
  IFS='|' read -r label per statuses <<<"$row"
  echo "| $label | $per | $statuses |"
done
