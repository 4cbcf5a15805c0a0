#!/usr/bin/env bash
# Two ratewarden builds side by side: gateway throughput with all requests allowed and
# with nearly all rejected, in alternating order, so that the machine's noisy moments
# fall on both builds alike.
#
#   scripts/bench-builds.sh OLD_BINARY NEW_BINARY [ROUNDS] [SECONDS]
#
# Same set-up as scripts/bench-gateway.sh (nginx returning 200 upstream, two worker
# threads, wrk -t2 -c50 over loopback, a 1 s warm-up), without the nginx limiter.
# Prints requests/s per round and build, and the median ratio NEW / OLD per load.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
OLD=$1 NEW=$2
ROUNDS=${3:-4}
SECONDS_PER_RUN=${4:-8}
ensure nginx wrk -- nginx wrk
bench_workdir
UPSTREAM=$(free_port)
ok_nginx "$UPSTREAM"

run() { # binary rate burst -> requests/s
  local port
  port=$(free_port)
  bench_ratewarden_toml "$WORK/$port.toml" "$port" "$UPSTREAM" "$2" "$3"
  RUST_LOG=warn TOKIO_WORKER_THREADS=2 "$1" serve --config "$WORK/$port.toml" >/dev/null 2>&1 &
  echo $! >"$WORK/$port.pid"
  wait_port "$port"
  wrk -t2 -c50 -d1s "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
  wrk -t2 -c50 -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print int($2)}'
  kill "$(cat "$WORK/$port.pid")"
  sleep 0.3
}

echo "old: $OLD; new: $NEW; wrk -t2 -c50 -d${SECONDS_PER_RUN}s; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $(date -u +%Y-%m-%d)"
echo
echo "| round | load | old (requests/s) | new (requests/s) | new / old |"
echo "|---|---|---|---|---|"
declare -A RATIOS
for r in $(seq "$ROUNDS"); do
  for load in allowed rejected; do
    if [ "$load" = allowed ]; then set -- 1000000/s 1000000; else set -- 1/m 1; fi
    if [ $((r % 2)) = 1 ]; then
      old=$(run "$OLD" "$@"); new=$(run "$NEW" "$@")
    else
      new=$(run "$NEW" "$@"); old=$(run "$OLD" "$@")
    fi
    ratio=$(python3 -c "print(f'{$new/$old:.3f}')")
    RATIOS[$load]+="$ratio "
    echo "| $r ($([ $((r % 2)) = 1 ] && echo old || echo new) first) | $load | $old | $new | $ratio |"
  done
done
median() { printf '%s\n' $1 | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
for load in allowed rejected; do echo "median new / old, $load: $(median "${RATIOS[$load]}")"; done
