#!/usr/bin/env bash
# What abuse alerting costs, in user-space instructions counted by valgrind's callgrind:
# the gateway of scripts/bench-alerts.sh (every request through a trusted proxy, one
# admitted per client per hour) under a flood from CLIENTS addresses, alerting off and
# on. All threads are counted, alerting's included: after the requests, both runs wait
# alike (metrics polled every 2 s until every raised alert has been delivered and the
# count holds still, then 6 s more, for batches of quiet clients, which wait up to 5 s)
# before the count is taken. It moves much less with the machine's noise than the
# throughput ratio of bench-alerts.sh (how a client's violations fall into batches
# still depends on timing: a few hundred instructions per request between runs); it
# counts no kernel work and no waiting, so it complements that ratio.
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
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
CLIENTS=${1:-10000}
PER_CLIENT=${2:-10}
BINARY=${3:-target/release/ratewarden}
REQUESTS=$((CLIENTS * PER_CLIENT))
[ "$CLIENTS" -ge 1 ] && [ "$CLIENTS" -le 65536 ] || { echo "CLIENTS: 1 to 65536" >&2; exit 2; }
ensure nginx valgrind -- nginx valgrind
[ -n "${3:-}" ] || cargo build -q --release -p ratewarden
bench_workdir
# nginx is both the upstream and the webhook receiver, as in bench-alerts.sh.
RECEIVER=$(free_port)
ok_nginx "$RECEIVER"

deliveries() { # admin port -> "raised sent dropped failed" (0 for a metric not there)
  curl -s "http://127.0.0.1:$1/metrics" | awk '
    $1 == "ratewarden_abuse_alerts_raised_total" {r = $2}
    index($1, "ratewarden_abuse_alert_deliveries_total{sink=\"webhook\"") == 1 {
      if ($1 ~ /outcome="sent"/) s = $2; else if ($1 ~ /outcome="dropped"/) d = $2; else if ($1 ~ /outcome="failed"/) f = $2
    }
    END {print r + 0, s + 0, d + 0, f + 0}'
}

# Until every raised alert has left the webhook's queue and the figures held still
# for two polls; three minutes at most. Then 6 s for the batches of quiet clients.
settle() { # admin port -> "raised sent dropped failed"
  local alerts previous="" raised sent dropped failed settled=0
  for _ in $(seq 90); do
    sleep 2
    alerts=$(deliveries "$1")
    read -r raised sent dropped failed <<<"$alerts"
    if [ "$alerts" = "$previous" ] && [ "$raised" = "$((sent + dropped + failed))" ]; then
      settled=1
      break
    fi
    previous=$alerts
  done
  [ "$settled" = 1 ] || echo "warning: alert deliveries still moving after 3 minutes" >&2
  sleep 6
  deliveries "$1"
}

# count SETUP EXTRA -> "instructions per request|statuses|raised sent dropped failed"
count() {
  local port admin pid out statuses alerts
  port=$(free_port); admin=$(free_port)
  bench_flood_toml "$WORK/$1.toml" "$port" "$admin" "$RECEIVER" "$2"
  out="$WORK/callgrind.$1"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BINARY" serve --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  pid=$!
  echo "$pid" >"$WORK/$1.pid"
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  wait_port "$admin"
  # Warm-up from addresses outside the flood's, one request each: nothing to alert on.
  python3 scripts/bench_requests.py "$port" 500 500 10.1 >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  statuses=$(python3 scripts/bench_requests.py "$port" "$REQUESTS" "$CLIENTS")
  local answered
  answered=$(tr ' ' '\n' <<<"$statuses" | awk -F: '{n += $2} END {print n + 0}')
  [ "$answered" = "$REQUESTS" ] || { echo "$1: $answered answers to $REQUESTS requests" >&2; exit 1; }
  alerts=$(settle "$admin")
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # Every dump after the zeroing, all threads.
  local total
  total=$(cat "$out".* 2>/dev/null | awk '/^summary:/ {s += $2} END {print s + 0}')
  [ "$total" -gt 0 ] || { echo "$1: no callgrind counts in $out.*" >&2; exit 1; }
  echo "$((total / REQUESTS))|$statuses|$alerts"
}

OFF_ROW=$(count off "")
ON_ROW=$(count on "$(bench_abuse_section "$RECEIVER")")
IFS='|' read -r OFF OFF_STATUSES _ <<<"$OFF_ROW"
IFS='|' read -r ON ON_STATUSES ON_ALERTS <<<"$ON_ROW"
read -r RAISED SENT DROPPED FAILED <<<"$ON_ALERTS"

echo "callgrind, $CLIENTS clients x $PER_CLIENT requests ($REQUESTS), 10 keep-alive connections; $BINARY; $(valgrind --version); $(date -u +%Y-%m-%d)"
echo
echo "| alerting | instructions per request | statuses | alerts raised | webhook sent / dropped / failed |"
echo "|---|---|---|---|---|"
echo "| off | $OFF | $OFF_STATUSES | - | - |"
echo "| on | $ON | $ON_STATUSES | $RAISED | $SENT / $DROPPED / $FAILED |"
echo
echo "instructions per request, on / off: $(python3 -c "print(f'{$ON/$OFF:.3f}')")"
