#!/usr/bin/env bash
# Gateway throughput with abuse alerting on, beside alerting off, during a flood that
# triggers alerts from 10,000 distinct clients; same run, same machine.
#
#   scripts/bench-alerts.sh [SECONDS] [CONNECTIONS] [ROUNDS]
#   BEFORE=/path/to/older/ratewarden scripts/bench-alerts.sh ...   # also that build, alerting on
#
# wrk sends every request through a trusted proxy address (127.0.0.1) with an
# X-Forwarded-For drawn from 10,000 client addresses; the rule admits one request per
# client per hour, so nearly every request is a 429 and every client crosses the alert
# threshold (3) within the first seconds. Alerting on: a webhook to a local receiver
# and the log sink. Prints requests/s for both, the ratio, wrk's p50 and p99 latency,
# and alerts raised, sent and dropped, per round, and the median and geometric mean of
# the ratios over the rounds (default 4). Installs nginx and wrk from Debian's packages if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-50}
ROUNDS=${3:-4}
# An older build (another commit's) measured with alerting on in the same rounds.
BEFORE=${BEFORE:-}

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

gateway() { # name abuse-section [binary] -> "port admin"
  local port admin
  port=$(free_port); admin=$(free_port)
  bench_flood_toml "$WORK/$1.toml" "$port" "$admin" "$RECEIVER" "$2"
  RUST_LOG=warn "${3:-target/release/ratewarden}" serve --config "$WORK/$1.toml" >/dev/null 2>&1 &
  echo $! >"$WORK/$1.pid"
  wait_port "$port"; wait_port "$admin"
  echo "$port $admin"
}
load() { # port -> "requests/s requests p50 p99"
  wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -s "$WORK/flood.lua" "http://127.0.0.1:$1/" |
    awk '/requests in/ {n=$1} /Requests\/sec/ {r=$2} $1 == "50%" {p50=$2} $1 == "99%" {p99=$2}
         END {print r, n, p50, p99}'
}
# CPU time (user + system, all threads) a process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Gateway CPU per request in microseconds: its whole CPU time, alerting's threads
# included, over the requests of the run. Steadier than throughput on a shared machine,
# because another tenant's load slows both.
cpu_per_request() { # ticks requests
  python3 -c "print(f'{$1 * 1e6 / $(getconf CLK_TCK) / $2:.1f}')"
}

ABUSE=$(bench_abuse_section "$RECEIVER")

# Milliseconds of CPU the alerting threads of process PID used: the main runtime's
# workers, where alerting runs (requests are served on threads of their own).
alerting_ms() {
  local ticks=0 t
  for t in /proc/"$1"/task/*; do
    [ "$(cat "$t/comm")" = tokio-rt-worker ] && ticks=$((ticks + $(awk '{print $14 + $15}' "$t/stat")))
  done
  echo $((ticks * 1000 / $(getconf CLK_TCK)))
}

SETUPS=(off on)
[ -n "$BEFORE" ] && SETUPS+=(before)

# One round: fresh gateways (so every round's "on" run raises its 10,000 alerts), one
# after the other, the first one rotating between rounds so no set-up always gets the
# machine's warmer or quieter moments. Sets R_<setup> (requests/s), CPU_<setup> (µs per
# request), ALERTING_<setup> (ms) and METRICS (of this build's "on" run).
round() { # index of the set-up to start with
  local i setup port admin requests rps pid n=${#SETUPS[@]}
  for ((i = 0; i < n; i++)); do
    setup=${SETUPS[$(((i + $1) % n))]}
    case $setup in
      off) read -r port admin <<<"$(gateway off "")" ;;
      on) read -r port admin <<<"$(gateway on "$ABUSE")" ;;
      before) read -r port admin <<<"$(gateway before "$ABUSE" "$BEFORE")" ;;
    esac
    pid=$(cat "$WORK/$setup.pid")
    read -r rps requests p50 p99 <<<"$(load "$port")"
    # Counted after the delivery of the last alerts, so none of their cost is missed.
    [ "$setup" != off ] && sleep 2
    printf -v "R_$setup" '%s' "${rps%.*}"
    printf -v "LATENCY_$setup" '%s' "$p50 / $p99"
    printf -v "CPU_$setup" '%s' "$(cpu_per_request "$(cpu_ticks "$pid")" "$requests")"
    printf -v "ALERTING_$setup" '%s' "$(alerting_ms "$pid")"
    if [ "$setup" = on ]; then
      METRICS="$(bench_metric "$admin" 'ratewarden_abuse_violations_total{source="gateway"}')"
      METRICS+=" | $(bench_metric "$admin" 'ratewarden_abuse_violations_dropped_total')"
      METRICS+=" | $(bench_metric "$admin" 'ratewarden_abuse_alerts_raised_total') |"
      for outcome in sent dropped failed; do
        METRICS+=" $(bench_metric "$admin" "ratewarden_abuse_alert_deliveries_total{sink=\"webhook\",outcome=\"$outcome\"}") /"
      done
      METRICS="${METRICS% /}"
    fi
    kill "$pid"
    sleep 0.5
  done
}

# Three decimals: the median is taken over these, and two would round 0.947 up to 0.95.
ratio() { python3 -c "print(f'{$1/$2:.3f}')"; }

echo "wrk -t2 -c$CONNECTIONS -d${SECONDS_PER_RUN}s per run, $ROUNDS rounds, 10,000 client addresses, nearly all 429; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $(date -u +%Y-%m-%d)"
[ -n "$BEFORE" ] && echo "before: $BEFORE"
echo
HEAD="| round | off (requests/s) | on (requests/s) | ratio on / off | p50 / p99, off | p50 / p99, on | CPU µs per request, off / on | CPU ratio on / off | alerting threads' CPU, on (ms)"
RULE="|---|---|---|---|---|---|---|---|---"
[ -n "$BEFORE" ] && HEAD+=" | before, on (requests/s) | before: ratio on / off | before: p50 / p99 | before: alerting threads' CPU (ms)" && RULE+="|---|---|---|---"
echo "$HEAD | violations reported | dropped uncounted | alerts raised | webhook sent / dropped / failed |"
echo "$RULE|---|---|---|---|"
RATIOS=() CPU_RATIOS=() BEFORE_RATIOS=()
for r in $(seq "$ROUNDS"); do
  round $((r - 1))
  RATIOS+=("$(ratio "$R_on" "$R_off")") CPU_RATIOS+=("$(ratio "$CPU_on" "$CPU_off")")
  line="| $r (${SETUPS[$(((r - 1) % ${#SETUPS[@]}))]} first) | $R_off | $R_on | ${RATIOS[-1]} | $LATENCY_off | $LATENCY_on | $CPU_off / $CPU_on | ${CPU_RATIOS[-1]} | $ALERTING_on"
  if [ -n "$BEFORE" ]; then
    BEFORE_RATIOS+=("$(ratio "$R_before" "$R_off")")
    line+=" | $R_before | ${BEFORE_RATIOS[-1]} | $LATENCY_before | $ALERTING_before"
  fi
  echo "$line | $METRICS |"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
# The second run of a round tends to be the slower (rounds starting with "off" had a
# geometric mean of 0.92, those starting with "on" 1.05, in one 12-round run on a 2-CPU
# EPYC): the geometric mean over rounds that start with each set-up equally often
# (ROUNDS a multiple of the set-ups) cancels that, where the median only tends to.
geomean() { python3 -c "import math, sys; r = [float(x) for x in sys.argv[1:]]; print(f'{math.exp(sum(map(math.log, r)) / len(r)):.3f}')" "$@"; }
echo "median throughput ratio on / off: $(median "${RATIOS[@]}"); median CPU-per-request ratio on / off: $(median "${CPU_RATIOS[@]}")"
echo "geometric mean of the throughput ratios on / off: $(geomean "${RATIOS[@]}")"
[ $((ROUNDS % ${#SETUPS[@]})) = 0 ] ||
  echo "(not every set-up started equally often: use a multiple of ${#SETUPS[@]} rounds to cancel the order effect)"
[ -n "$BEFORE" ] && echo "before: median throughput ratio on / off: $(median "${BEFORE_RATIOS[@]}"); geometric mean: $(geomean "${BEFORE_RATIOS[@]}")"
exit 0
