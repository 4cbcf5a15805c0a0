#!/usr/bin/env bash
# Gateway throughput and latency: ratewarden beside nginx's limit_req, same machine, same
# run, loaded in turn by wrk over loopback.
#
#   scripts/bench-gateway.sh [SECONDS] [CONNECTIONS] [ROUNDS]
#   BEFORE=/path/to/older/ratewarden scripts/bench-gateway.sh ...   # also that build
#   FLOOR=1 scripts/bench-gateway.sh ...   # also hyper alone: the same 429, a bare proxy
#
# A trivial upstream (nginx returning 200) serves three set-ups in turn:
#   (a) all allowed: the limit far above the load;
#   (b) nearly all rejected: 1 per minute per client;
#   (c) direct to the upstream, no limiter.
# nginx and ratewarden run with the same worker count (2) and no per-request logging
# (nginx: access_log off, error_log crit; ratewarden: RUST_LOG=warn).
# Every limiter is started once; each round then loads each of them in turn, the first
# one rotating between rounds, so that the machine's noisy moments fall on all alike.
# One round's ratios move by ±20% on a noisy 2-vCPU machine: read the medians.
# Each row also gives the CPU the limiter's processes spent per request (user and
# kernel, from /proc), which moves less with the machine's noise than requests/s.
# Installs nginx and wrk from Debian's packages if missing. Prints markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-50}
ROUNDS=${3:-1}
# An older build (another commit's), measured in the same run beside this one.
BEFORE=${BEFORE:-}
# With FLOOR set, rejected traffic also goes to crates/ratewarden/examples/hyper_floor.rs:
# the gateway's 429 answered by hyper and tokio alone, served as the gateway serves
# (`hyper-http1`: hyper's HTTP/1 connection; `hyper-auto`: hyper-util's automatic
# HTTP/1 and h2c connection with a header-read timeout, as the gateway has); and
# allowed traffic to the same example passing every request upstream untouched
# (`hyper-proxy`: hyper's server and client alone). What is left between them and
# ratewarden is the gateway's own work.
FLOOR=${FLOOR:-}

ensure nginx wrk -- nginx wrk
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build -q --release -p ratewarden
RATEWARDEN=target/release/ratewarden
[ -n "$FLOOR" ] && cargo build -q --release -p ratewarden --example hyper_floor

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
# The processes whose CPU a set-up's rows count, by port: nginx's master and workers,
# ratewarden, or hyper_floor.
declare -A PROCESSES
nginx_processes() { # name port workers
  local master workers=""
  master=$(cat "$WORK/nginx-$1.pid")
  # The port opens before the workers are forked.
  for _ in $(seq 100); do
    workers=$(pgrep -P "$master" | xargs || true)
    [ "$(wc -w <<<"$workers")" -ge "$3" ] && break
    sleep 0.05
  done
  PROCESSES[$2]="$master $workers"
}
nginx_conf upstream "$UPSTREAM" 1 "server { listen 127.0.0.1:$UPSTREAM; location / { return 200 'ok'; } }"
nginx_processes upstream "$UPSTREAM" 1

nginx_limiter() { # name port rate burst (0: none)
  local burst="burst=$4 nodelay"
  [ "$4" = 0 ] && burst=""
  nginx_conf "$1" "$2" 2 "
  upstream api { server 127.0.0.1:$UPSTREAM; keepalive 128; }
  limit_req_zone \$binary_remote_addr zone=z:10m rate=$3;
  limit_req_status 429;
  server { listen 127.0.0.1:$2;
    location / { limit_req zone=z $burst; proxy_pass http://api; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
  nginx_processes "$1" "$2" 2
}
ratewarden_limiter() { # name port rate burst [binary]
  bench_ratewarden_toml "$WORK/$1.toml" "$2" "$UPSTREAM" "$3" "$4"
  RUST_LOG=warn TOKIO_WORKER_THREADS=2 "${5:-$RATEWARDEN}" serve --config "$WORK/$1.toml" >/dev/null 2>&1 &
  PIDS+=($!)
  PROCESSES[$2]=$!
  wait_port "$2"
}

floor_limiter() { # port server [--upstream ADDRESS]
  target/release/examples/hyper_floor --listen "127.0.0.1:$1" --server "$2" "${@:3}" >/dev/null 2>&1 &
  PIDS+=($!)
  PROCESSES[$1]=$!
  wait_port "$1"
}

# Clock ticks (user + kernel) the processes listed for PORT have used so far.
cpu_ticks() { # port
  local total=0 p
  for p in ${PROCESSES[$1]}; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}

load() { # label port -> "rps p50 p99 non2xx cpu-us-per-request"
  wrk -t2 -c"$CONNECTIONS" -d1s "http://127.0.0.1:$2/" >/dev/null 2>&1 || true   # warm-up
  local out before after
  before=$(cpu_ticks "$2")
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1:$2/")
  after=$(cpu_ticks "$2")
  local rps p50 p99 non2xx requests cpu
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=$(python3 -c "print(f'{($after - $before) * 1e6 / $(getconf CLK_TCK) / $requests:.1f}')")
  echo "$1|$rps|$p50|$p99|${non2xx:-0}|$cpu"
}

LIMITERS=(nginx ratewarden)
[ -n "$BEFORE" ] && LIMITERS+=(before)
[ -n "$FLOOR" ] && LIMITERS+=(hyper-http1 hyper-auto hyper-proxy)
declare -A PORT
for load in allowed rejected; do
  for limiter in "${LIMITERS[@]}"; do
    # The floor answers 429 to everything (rejected traffic), or passes everything on
    # (allowed traffic).
    case "$limiter-$load" in hyper-http1-allowed | hyper-auto-allowed | hyper-proxy-rejected) continue ;; esac
    P=$(free_port)
    PORT[$limiter-$load]=$P
    case "$limiter-$load" in
      nginx-allowed) nginx_limiter nginx-allow "$P" "1000000r/s" 1000000 ;;
      nginx-rejected) nginx_limiter nginx-deny "$P" "1r/m" 0 ;;
      ratewarden-allowed) ratewarden_limiter rw-allow "$P" "1000000/s" 1000000 ;;
      ratewarden-rejected) ratewarden_limiter rw-deny "$P" "1/m" 1 ;;
      before-allowed) ratewarden_limiter old-allow "$P" "1000000/s" 1000000 "$BEFORE" ;;
      before-rejected) ratewarden_limiter old-deny "$P" "1/m" 1 "$BEFORE" ;;
      hyper-http1-rejected) floor_limiter "$P" http1 ;;
      hyper-auto-rejected) floor_limiter "$P" auto ;;
      hyper-proxy-allowed) floor_limiter "$P" auto --upstream "127.0.0.1:$UPSTREAM" ;;
    esac
  done
done

ROWS=()
declare -A RPS CPU
for round in $(seq "$ROUNDS"); do
  for load in allowed rejected; do
    n=${#LIMITERS[@]}
    for i in $(seq 0 $((n - 1))); do
      limiter=${LIMITERS[$(((i + round - 1) % n))]}
      [ -n "${PORT[$limiter-$load]:-}" ] || continue
      row=$(load "$limiter, $load (round $round)" "${PORT[$limiter-$load]}")
      ROWS+=("$row")
      RPS[$limiter-$load-$round]=$(cut -d'|' -f2 <<<"$row")
      CPU[$limiter-$load-$round]=$(cut -d'|' -f6 <<<"$row")
    done
  done
done
C_DIRECT=$(load "direct to upstream" "$UPSTREAM")
ROWS+=("$C_DIRECT")

echo "wrk -t2 -c$CONNECTIONS -d${SECONDS_PER_RUN}s over loopback, $ROUNDS round(s); $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $("$NGINX" -v 2>&1 | cut -d' ' -f3); $(date -u +%Y-%m-%d)"
[ -n "$BEFORE" ] && echo "before: $BEFORE"
echo
echo "| set-up | requests/s | p50 | p99 | non-2xx | CPU µs per request |"
echo "|---|---|---|---|---|---|"
for row in "${ROWS[@]}"; do
  IFS='|' read -r label rps p50 p99 non cpu <<<"$row"
  echo "| $label | $rps | $p50 | $p99 | $non | $cpu |"
done
# ratios FIGURES LIMITER LOAD -> "r1 r2 ... |median", FIGURES being RPS or CPU
ratios() {
  local -n figures=$1
  local all=()
  for round in $(seq "$ROUNDS"); do
    all+=("$(python3 -c "print(f'{${figures[$2-$3-$round]}/${figures[nginx-$3-$round]}:.2f}')")")
  done
  echo "${all[*]}|$(printf '%s\n' "${all[@]}" | sort -n | python3 -c "import sys, statistics; print(f'{statistics.median(float(l) for l in sys.stdin):.2f}')")"
}
# ratio_table FIGURES TITLE: each limiter's FIGURES over nginx's, round by round.
ratio_table() {
  echo
  echo "| $2 | rounds | median |"
  echo "|---|---|---|"
  for limiter in "${LIMITERS[@]:1}"; do
    for load in allowed rejected; do
      [ -n "${PORT[$limiter-$load]:-}" ] || continue
      IFS='|' read -r each median <<<"$(ratios "$1" "$limiter" "$load")"
      echo "| $limiter, $load | $each | **$median** |"
    done
  done
}
ratio_table RPS "ratio to nginx, same round"
ratio_table CPU "CPU per request, ratio to nginx, same round"
