#!/usr/bin/env bash
# Gateway throughput with abuse alerting on, beside alerting off, during a flood that
# triggers alerts from 10,000 distinct clients; same run, same machine.
#
#   scripts/bench-alerts.sh [SECONDS] [CONNECTIONS]
#
# wrk sends every request through a trusted proxy address (127.0.0.1) with an
# X-Forwarded-For drawn from 10,000 client addresses; the rule admits one request per
# client per hour, so nearly every request is a 429 and every client crosses the alert
# threshold (3) within the first seconds. Alerting on: a webhook to a local receiver
# and the log sink. Prints requests/s for both, the ratio, and alerts raised, sent and
# dropped. Installs nginx and wrk from Debian's packages if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-50}

ensure nginx wrk -- nginx wrk
cargo build -q --release -p ratewarden

bench_workdir

# nginx (one worker) is both the upstream (GET) and the webhook receiver (POST): 200
# to everything, as cheaply as a receiver can be, so the receiver's own CPU weighs as
# little as possible on the two cores the gateway runs on.
RECEIVER=$(free_port)
ok_nginx "$RECEIVER"

cat >"$WORK/flood.lua" <<'LUA'
request = function()
  local c = math.random(0, 9999)
  local xff = string.format("10.0.%d.%d", math.floor(c / 256), c % 256)
  return wrk.format("GET", "/api/x", { ["X-Forwarded-For"] = xff })
end
LUA

gateway() { # name abuse-section -> "port admin"
  local port admin
  port=$(free_port); admin=$(free_port)
  cat >"$WORK/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
upstream = "http://127.0.0.1:$RECEIVER"
admin_listen = "127.0.0.1:$admin"
[clients]
trusted_proxies = ["127.0.0.1/32"]
[[rules]]
name = "api"
match = { path_prefix = "/api/" }
rate = "1/h"
burst = 1
$2
CONF
  RUST_LOG=warn target/release/ratewarden serve --config "$WORK/$1.toml" >/dev/null 2>&1 &
  echo $! >"$WORK/$1.pid"
  wait_port "$port"; wait_port "$admin"
  echo "$port $admin"
}
load() { # port -> requests/s
  wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" -s "$WORK/flood.lua" "http://127.0.0.1:$1/" | awk '/Requests\/sec/ {print $2}'
}
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" 'index($0, m) == 1 {print $NF}' | head -1; }

read -r OFF_PORT OFF_ADMIN <<<"$(gateway off "")"
OFF=$(load "$OFF_PORT")
kill "$(cat "$WORK/off.pid")"
read -r ON_PORT ON_ADMIN <<<"$(gateway on "
[abuse]
window = \"1h\"
alert_after = 3
cooldown = \"10m\"
[[alerts]]
kind = \"webhook\"
url = \"http://127.0.0.1:$RECEIVER/hooks\"
[[alerts]]
kind = \"log\"")"
ON=$(load "$ON_PORT")
sleep 2
VIOLATIONS=$(metric "$ON_ADMIN" 'ratewarden_abuse_violations_total{source="gateway"}')
V_DROPPED=$(metric "$ON_ADMIN" 'ratewarden_abuse_violations_dropped_total')
RAISED=$(metric "$ON_ADMIN" 'ratewarden_abuse_alerts_raised_total')
SENT=$(metric "$ON_ADMIN" 'ratewarden_abuse_alert_deliveries_total{sink="webhook",outcome="sent"}')
DROPPED=$(metric "$ON_ADMIN" 'ratewarden_abuse_alert_deliveries_total{sink="webhook",outcome="dropped"}')
FAILED=$(metric "$ON_ADMIN" 'ratewarden_abuse_alert_deliveries_total{sink="webhook",outcome="failed"}')

echo "wrk -t2 -c$CONNECTIONS -d${SECONDS_PER_RUN}s, 10,000 client addresses, nearly all 429; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $(date -u +%Y-%m-%d)"
echo
echo "| set-up | requests/s |"
echo "|---|---|"
echo "| alerting off | $OFF |"
echo "| alerting on (webhook + log) | $ON |"
echo "| ratio on / off | $(python3 -c "print(f'{float(\"$ON\")/float(\"$OFF\"):.2f}')") |"
echo
echo "violations reported $VIOLATIONS (dropped uncounted: ${V_DROPPED:-0}); alerts raised $RAISED; webhook: sent ${SENT:-0}, dropped ${DROPPED:-0}, failed ${FAILED:-0}"
