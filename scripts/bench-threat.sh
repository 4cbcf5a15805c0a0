#!/usr/bin/env bash
# Gateway throughput with adaptive defence ([threat]) on, beside off, in the same run:
# with the memory store, and with Redis.
#
#   scripts/bench-threat.sh [SECONDS] [CONNECTIONS] [CLIENTS]
#
# wrk sends every request through a trusted proxy address (127.0.0.1) with an
# X-Forwarded-For drawn from CLIENTS (default 10,000) client addresses; the rule admits everything, so
# each request costs what defence adds to an allowed request: reading the client's
# standing before the rules, and recording its behaviour afterwards. The upstream is
# nginx answering 200. Redis: the server on 127.0.0.1:6379 if it answers, else one
# started here on a free port. Installs nginx, wrk and redis-server from Debian's
# packages if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-50}
CLIENTS=${3:-10000}

ensure nginx wrk redis-server redis-cli -- nginx wrk redis-server redis-tools
cargo build -q --release -p ratewarden

bench_workdir

UPSTREAM=$(free_port)
ok_nginx "$UPSTREAM"

if redis-cli -p 6379 ping >/dev/null 2>&1; then
  REDIS_PORT=6379
else
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --daemonize no >/dev/null &
  echo $! >"$WORK/redis.pid"
  wait_port "$REDIS_PORT"
fi

cat >"$WORK/clients.lua" <<LUA
request = function()
  local c = math.random(0, $CLIENTS - 1)
  local xff = string.format("10.0.%d.%d", math.floor(c / 256), c % 256)
  return wrk.format("GET", "/api/x", { ["X-Forwarded-For"] = xff })
end
LUA

gateway() { # name store-section threat-section -> port
  local port admin
  port=$(free_port); admin=$(free_port)
  cat >"$WORK/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
upstream = "http://127.0.0.1:$UPSTREAM"
admin_listen = "127.0.0.1:$admin"
[clients]
trusted_proxies = ["127.0.0.1/32"]
$2
[[rules]]
name = "api"
match = { path_prefix = "/api/" }
rate = "100000/s"
burst = 100000
$3
CONF
  RUST_LOG=warn target/release/ratewarden serve --config "$WORK/$1.toml" >/dev/null 2>&1 &
  echo $! >"$WORK/$1.pid"
  wait_port "$port"; wait_port "$admin"
  echo "$port"
}
load() { # port -> requests/s
  wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" -s "$WORK/clients.lua" "http://127.0.0.1:$1/" | awk '/Requests\/sec/ {print $2}'
}
run() { # name store-section threat-section -> requests/s
  local port rps
  port=$(gateway "$1" "$2" "$3")
  rps=$(load "$port")
  kill "$(cat "$WORK/$1.pid")"
  sleep 0.5
  echo "$rps"
}

MEMORY="[store]
kind = \"memory\""
REDIS="[store]
kind = \"redis\"
url = \"redis://127.0.0.1:$REDIS_PORT\"
key_prefix = \"rwbench$$\""
THREAT="[threat]"

M_OFF=$(run m-off "$MEMORY" "")
M_ON=$(run m-on "$MEMORY" "$THREAT")
R_OFF=$(run r-off "$REDIS" "")
R_ON=$(run r-on "$REDIS" "$THREAT")
ratio() { python3 -c "print(f'{float(\"$1\")/float(\"$2\"):.2f}')"; }

echo "wrk -t2 -c$CONNECTIONS -d${SECONDS_PER_RUN}s, $CLIENTS client addresses, all allowed; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $(date -u +%Y-%m-%d)"
echo
echo "| store | [threat] off, requests/s | [threat] on, requests/s | ratio on / off |"
echo "|---|---|---|---|"
echo "| memory | $M_OFF | $M_ON | $(ratio "$M_ON" "$M_OFF") |"
echo "| redis | $R_OFF | $R_ON | $(ratio "$R_ON" "$R_OFF") |"
