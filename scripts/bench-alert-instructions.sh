#!/usr/bin/env bash
# What abuse alerting costs, in user-space instructions counted by valgrind's callgrind:
# the gateway of scripts/bench-alerts.sh (every request through a trusted proxy, one
# admitted per client per hour) under a flood from CLIENTS addresses, alerting off and
# on. All threads are counted, alerting's included: the "on" count is taken after the
# last alert was delivered and the waiting batches were flushed. Unlike the
# throughput ratio of bench-alerts.sh, the figure does not move with the machine's
# noise; it counts no kernel work and no waiting, so it complements that ratio.
#
#   scripts/bench-alert-instructions.sh [CLIENTS] [REQUESTS_PER_CLIENT] [BINARY]
#
# Requests go over 10 keep-alive connections, one in flight on each, client after
# client (request i names client i % CLIENTS), so each client's requests are spread
# over the whole run. Defaults: 10,000 clients, 10 requests each, target/release.
# Under callgrind the gateway serves a few thousand requests a second, so a client's
# violations come seconds apart and are seldom coalesced into one batch: alerting's
# share of the work is larger here than in the wrk flood, where the same client is
# seen many times between two flushes. The ratio is an upper bound of alerting's cost.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
CLIENTS=${1:-10000}
PER_CLIENT=${2:-10}
BINARY=${3:-target/release/ratewarden}
REQUESTS=$((CLIENTS * PER_CLIENT))
ensure nginx valgrind -- nginx valgrind
[ -n "${3:-}" ] || cargo build -q --release -p ratewarden
bench_workdir
# nginx is both the upstream and the webhook receiver, as in bench-alerts.sh.
RECEIVER=$(free_port)
ok_nginx "$RECEIVER"

deliveries() { # admin port -> "raised sent dropped failed"
  local out outcome
  out=$(bench_metric "$1" ratewarden_abuse_alerts_raised_total)
  for outcome in sent dropped failed; do
    out+=" $(bench_metric "$1" "ratewarden_abuse_alert_deliveries_total{sink=\"webhook\",outcome=\"$outcome\"}")"
  done
  echo "$out"
}

# count SETUP EXTRA -> "instructions per request|statuses|raised sent dropped failed"
count() {
  local port admin pid out statuses alerts="- - - -" previous="" raised sent dropped failed
  port=$(free_port); admin=$(free_port)
  bench_flood_toml "$WORK/$1.toml" "$port" "$admin" "$RECEIVER" "$2"
  out="$WORK/callgrind.$1"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BINARY" serve --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  pid=$!
  echo "$pid" >"$WORK/$1.pid"
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  wait_port "$admin"
  callgrind_control -z "$pid" >/dev/null 2>&1
  statuses=$(python3 scripts/bench_requests.py "$port" "$REQUESTS" "$CLIENTS")
  if [ -n "$2" ]; then
    # Until every raised alert has left the webhook's queue and the count has held
    # still for two polls (batches of quiet clients wait up to 5 s before they are
    # counted); three minutes at most.
    for _ in $(seq 90); do
      sleep 2
      alerts=$(deliveries "$admin")
      read -r raised sent dropped failed <<<"$alerts"
      [ "$alerts" = "$previous" ] && [ "$raised" = "$((${sent:-0} + ${dropped:-0} + ${failed:-0}))" ] && break
      previous=$alerts
    done
    sleep 6
    alerts=$(deliveries "$admin")
  fi
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # Every dump after the zeroing, all threads.
  local total
  total=$(cat "$out".* 2>/dev/null | awk '/^summary:/ {s += $2} END {print s + 0}')
  echo "$((total / REQUESTS))|$statuses|$alerts"
}

IFS='|' read -r OFF OFF_STATUSES _ <<<"$(count off "")"
IFS='|' read -r ON ON_STATUSES ON_ALERTS <<<"$(count on "$(bench_abuse_section "$RECEIVER")")"
read -r RAISED SENT DROPPED FAILED <<<"$ON_ALERTS"

echo "callgrind, $CLIENTS clients x $PER_CLIENT requests ($REQUESTS), 10 keep-alive connections; $BINARY; $(valgrind --version); $(date -u +%Y-%m-%d)"
echo
echo "| alerting | instructions per request | statuses | alerts raised | webhook sent / dropped / failed |"
echo "|---|---|---|---|---|"
echo "| off | $OFF | $OFF_STATUSES | - | - |"
echo "| on | $ON | $ON_STATUSES | $RAISED | $SENT / $DROPPED / $FAILED |"
echo
echo "instructions per request, on / off: $(python3 -c "print(f'{$ON/$OFF:.3f}')")"
