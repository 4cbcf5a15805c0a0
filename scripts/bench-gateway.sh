#!/usr/bin/env bash
# Gateway throughput and latency: ratewarden beside nginx's limit_req, same machine, same
# run, loaded in turn by wrk over loopback.
#
#   scripts/bench-gateway.sh [SECONDS] [CONNECTIONS]
#   BEFORE=/path/to/older/ratewarden scripts/bench-gateway.sh ...   # also that build
#
# A trivial upstream (nginx returning 200) serves three set-ups in turn:
#   (a) all allowed: the limit far above the load;
#   (b) nearly all rejected: 1 per minute per client;
#   (c) direct to the upstream, no limiter.
# nginx and ratewarden run with the same worker count (2) and no per-request logging
# (nginx: access_log off, error_log crit; ratewarden: RUST_LOG=warn).
# Installs nginx and wrk from Debian's packages if missing. Prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-50}
# An older build (another commit's), measured in the same run beside this one.
BEFORE=${BEFORE:-}

ensure nginx wrk -- nginx wrk
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build -q --release -p ratewarden
RATEWARDEN=target/release/ratewarden

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
  for conf in "$WORK"/nginx-*.conf; do [ -f "$conf" ] && "$NGINX" -c "$conf" -s quit 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT


UPSTREAM=$(free_port)
nginx_conf() { # name port workers body
  cat >"$WORK/nginx-$1.conf" <<CONF
worker_processes $3;
pid $WORK/nginx-$1.pid;
error_log /dev/null crit;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1-body; proxy_temp_path $WORK/$1-proxy;
  fastcgi_temp_path $WORK/$1-fcgi; uwsgi_temp_path $WORK/$1-uwsgi; scgi_temp_path $WORK/$1-scgi;
  $4
}
CONF
  "$NGINX" -c "$WORK/nginx-$1.conf"
  wait_port "$2"
}
nginx_conf upstream "$UPSTREAM" 1 "server { listen 127.0.0.1:$UPSTREAM; location / { return 200 'ok'; } }"

nginx_limiter() { # name port rate burst (0: none)
  local burst="burst=$4 nodelay"
  [ "$4" = 0 ] && burst=""
  nginx_conf "$1" "$2" 2 "
  upstream api { server 127.0.0.1:$UPSTREAM; keepalive 128; }
  limit_req_zone \$binary_remote_addr zone=z:10m rate=$3;
  limit_req_status 429;
  server { listen 127.0.0.1:$2;
    location / { limit_req zone=z $burst; proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
}
ratewarden_limiter() { # name port rate burst [binary]
  cat >"$WORK/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$2"
upstream = "http://127.0.0.1:$UPSTREAM"
[[rules]]
name = "bench"
rate = "$3"
burst = $4
CONF
  RUST_LOG=warn TOKIO_WORKER_THREADS=2 "${5:-$RATEWARDEN}" serve --config "$WORK/$1.toml" >/dev/null 2>&1 &
  PIDS+=($!)
  wait_port "$2"
}

load() { # label port -> "rps p50 p99 non2xx"
  wrk -t2 -c"$CONNECTIONS" -d1s "http://127.0.0.1:$2/" >/dev/null 2>&1 || true   # warm-up
  local out
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1:$2/")
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  echo "$1|$rps|$p50|$p99|${non2xx:-0}"
}

P=$(free_port); nginx_limiter nginx-allow "$P" "1000000r/s" 1000000; A_NGINX=$(load "nginx, all allowed" "$P")
P=$(free_port); ratewarden_limiter rw-allow "$P" "1000000/s" 1000000; A_RW=$(load "ratewarden, all allowed" "$P")
P=$(free_port); nginx_limiter nginx-deny "$P" "1r/m" 0; B_NGINX=$(load "nginx, nearly all rejected" "$P")
P=$(free_port); ratewarden_limiter rw-deny "$P" "1/m" 1; B_RW=$(load "ratewarden, nearly all rejected" "$P")
C_DIRECT=$(load "direct to upstream" "$UPSTREAM")
ROWS=("$A_NGINX" "$A_RW" "$B_NGINX" "$B_RW" "$C_DIRECT")
if [ -n "$BEFORE" ]; then
  P=$(free_port); ratewarden_limiter old-allow "$P" "1000000/s" 1000000 "$BEFORE"; A_OLD=$(load "before, all allowed" "$P")
  P=$(free_port); ratewarden_limiter old-deny "$P" "1/m" 1 "$BEFORE"; B_OLD=$(load "before, nearly all rejected" "$P")
  ROWS+=("$A_OLD" "$B_OLD")
fi

echo "wrk -t2 -c$CONNECTIONS -d${SECONDS_PER_RUN}s over loopback; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $(date -u +%Y-%m-%d)"
echo
echo "| set-up | requests/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
for row in "${ROWS[@]}"; do
  IFS='|' read -r label rps p50 p99 non <<<"$row"
  echo "| $label | $rps | $p50 | $p99 | $non |"
done
ratio() { python3 -c "print(f'{float(\"$1\")/float(\"$2\"):.2f}')"; }
rps() { cut -d'|' -f2 <<<"$1"; }
echo
echo "| ratio ratewarden / nginx | throughput |"
echo "|---|---|"
echo "| (a) all allowed | $(ratio "$(rps "$A_RW")" "$(rps "$A_NGINX")") |"
echo "| (b) nearly all rejected | $(ratio "$(rps "$B_RW")" "$(rps "$B_NGINX")") |"
if [ -n "$BEFORE" ]; then
  echo "| (a) all allowed, before ($BEFORE) | $(ratio "$(rps "$A_OLD")" "$(rps "$A_NGINX")") |"
  echo "| (b) nearly all rejected, before | $(ratio "$(rps "$B_OLD")" "$(rps "$B_NGINX")") |"
fi
