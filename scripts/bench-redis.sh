#!/usr/bin/env bash
# Decisions per second on Redis: ratewarden beside redis-benchmark running the same
# EVALSHA, on one Redis of our own, in the same run.
#
#   scripts/bench-redis.sh [SECONDS] [CONNECTIONS]
#
# (1) redis-benchmark: the limiter script by EVALSHA, 50 clients, 10,000 keys, without
#     pipelining (-P 1) and pipelined (-P 16): the ceiling of this Redis for this script.
# (2) the Redis store alone, driven by 64 requests in flight from one process
#     (crates/ratewarden-store/examples/redis_decisions.rs).
# (3) the gateway on Redis, and on memory for comparison, loaded by wrk over loopback
#     (every request admitted and written), with the p99 of the gateway's own decision
#     latency histogram (ratewarden_decision_seconds).
# Installs redis-server and wrk from Debian's packages if missing. Prints markdown.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-50}

ensure redis-server redis-benchmark wrk -- redis-server redis-tools wrk

cargo build -q --release -p ratewarden
cargo build -q --release -p ratewarden-store --example redis_decisions

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}" $(cat "$WORK"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  sleep 0.3; rm -rf "$WORK"
}
trap cleanup EXIT

REDIS=$(free_port)
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$REDIS"
SCRIPTS=crates/ratewarden-store/scripts
SHA=$(redis-cli -p "$REDIS" SCRIPT LOAD "$(cat $SCRIPTS/common.lua $SCRIPTS/gcra.lua $SCRIPTS/sliding_window.lua $SCRIPTS/fixed_window.lua $SCRIPTS/limiter.lua)")

# The same call the store makes for one GCRA check: key, mode, server time, algorithm,
# cost, interval 1 us, tolerance and capacity 1,000,000 (always admitted).
bench_evalsha() { # pipeline -> requests/s
  redis-benchmark -p "$REDIS" -c 50 -n 300000 -r 10000 -P "$1" --csv \
    EVALSHA "$SHA" 1 'rwbench:v1:{__rand_int__}:bench:0' decide '' gcra 1 1 1000000 1000000 '' \
    | awk -F'","' 'NR==2 {print $2}'
}
EVAL_P1=$(bench_evalsha 1)
EVAL_P16=$(bench_evalsha 16)
STORE=$(target/release/examples/redis_decisions "redis://127.0.0.1:$REDIS" "$SECONDS_PER_RUN" 64)
STORE_RATE=$(awk '{print $1}' <<<"$STORE")

UPSTREAM=$(free_port)
python3 - "$UPSTREAM" >/dev/null 2>&1 <<'PY' &
import sys, asyncio
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except Exception:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
asyncio.run(main())
PY
PIDS+=($!)
wait_port "$UPSTREAM"

gateway() { # name store-toml -> port admin
  local port admin
  port=$(free_port); admin=$(free_port)
  cat >"$WORK/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
upstream = "http://127.0.0.1:$UPSTREAM"
admin_listen = "127.0.0.1:$admin"
[store]
$2
[[rules]]
name = "bench"
rate = "1000000/s"
burst = 1000000
CONF
  # Run in a command substitution: the pid goes to a file, not to PIDS.
  RUST_LOG=warn target/release/ratewarden serve --config "$WORK/$1.toml" >/dev/null 2>&1 &
  echo $! >"$WORK/$1.pid"
  wait_port "$port"; wait_port "$admin"
  echo "$port $admin"
}
load() { # port -> "rps p99"; only 2xx answers count
  wrk -t2 -c"$CONNECTIONS" -d1s "http://127.0.0.1:$1/" >/dev/null 2>&1 || true
  local out
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1:$1/")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers on port $1: $out" >&2; exit 1; fi
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(awk '$1=="99%" {print $2}' <<<"$out")"
}
decision_p99() { # admin port -> p99 of ratewarden_decision_seconds, in microseconds
  curl -s "http://127.0.0.1:$1/metrics" | python3 -c '
import sys
buckets = []
for line in sys.stdin:
    if line.startswith("ratewarden_decision_seconds_bucket"):
        le = line.split("le=\"")[1].split("\"")[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
total = buckets[-1][1]
print(next(f"{le*1e6:.0f}" for le, n in buckets if n >= 0.99 * total))'
}
read -r RW_PORT RW_ADMIN <<<"$(gateway on-redis "kind = \"redis\"
url = \"redis://127.0.0.1:$REDIS\"
timeout = \"100ms\"")"
read -r GW_RPS GW_P99 <<<"$(load "$RW_PORT")"
GW_DECISION_P99=$(decision_p99 "$RW_ADMIN")
kill "$(cat "$WORK/on-redis.pid")"
read -r MEM_PORT MEM_ADMIN <<<"$(gateway on-memory 'kind = "memory"')"
read -r MEM_RPS MEM_P99 <<<"$(load "$MEM_PORT")"
MEM_DECISION_P99=$(decision_p99 "$MEM_ADMIN")

ratio() { python3 -c "print(f'{float(\"$1\")/float(\"$2\"):.2f}')"; }
echo "Redis $(redis-server --version | awk '{print $3}'), one instance on loopback; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $(date -u +%Y-%m-%d)"
echo
echo "| what | decisions/s | latency p99 | ratio to pipelined EVALSHA |"
echo "|---|---|---|---|"
echo "| redis-benchmark EVALSHA, -P 1 (50 clients) | $EVAL_P1 | | $(ratio "$EVAL_P1" "$EVAL_P16") |"
echo "| redis-benchmark EVALSHA, -P 16 (the ceiling) | $EVAL_P16 | | 1.00 |"
echo "| ratewarden Redis store, 64 in flight | $STORE_RATE | $(awk '{print $7}' <<<"$STORE") us | $(ratio "$STORE_RATE" "$EVAL_P16") |"
echo "| ratewarden gateway on Redis, wrk -c$CONNECTIONS | $GW_RPS | $GW_P99 (HTTP), ${GW_DECISION_P99} us (decision) | $(ratio "$GW_RPS" "$EVAL_P16") |"
echo "| ratewarden gateway on memory, wrk -c$CONNECTIONS | $MEM_RPS | $MEM_P99 (HTTP), ${MEM_DECISION_P99} us (decision) | |"
