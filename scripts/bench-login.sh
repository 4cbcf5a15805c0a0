#!/usr/bin/env bash
# Login-route cost: the latency and throughput of a [[login]] route (the body read up to
# max_body to find the account, the account's state checked and its outcome recorded in
# the store) beside a route of the same gateway without login protection, with the same
# POST body, loaded in turn by wrk over loopback; with the memory store and with Redis.
#
#   scripts/bench-login.sh [SECONDS] [CONNECTIONS]
#
# Every request names a new account (a wrk script numbers them), as a stuffing attack
# or many users would; the upstream (nginx returning 200) accepts every login, so no
# account is ever locked. Needs a Redis on 127.0.0.1:6379 for the Redis rows.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/common.sh
. scripts/common.sh
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-50}

ensure nginx wrk -- nginx wrk

cargo build -q --release -p ratewarden
RATEWARDEN=target/release/ratewarden

bench_workdir

UPSTREAM=$(free_port)
ok_nginx "$UPSTREAM"

# A JSON login naming a new account on every request.
cat >"$WORK/login.lua" <<'LUA'
local n = 0
local id = tostring(math.random(1, 1000000000))
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local body = '{"username":"user-' .. id .. '-' .. n .. '@example.com","password":"correct-horse-battery-staple"}'
  return wrk.format(nil, nil, nil, body)
end
LUA

gateway() { # name port store-section
  cat >"$WORK/$1.toml" <<CONF
[server]
listen = "127.0.0.1:$2"
upstream = "http://127.0.0.1:$UPSTREAM"
$3
[privacy]
secret = "bench-login-secret-0123456789"
[[login]]
name = "login"
match = { path = "/login", methods = ["POST"] }
account = "json:username"
CONF
  RUST_LOG=warn "$RATEWARDEN" serve --config "$WORK/$1.toml" >/dev/null 2>&1 &
  echo $! >"$WORK/$1.pid"
  wait_port "$2"
}

load() { # label port path -> "label|rps|p50|p99|non2xx"
  wrk -t2 -c"$CONNECTIONS" -d1s -s "$WORK/login.lua" "http://127.0.0.1:$2$3" >/dev/null 2>&1 || true
  local out
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -s "$WORK/login.lua" "http://127.0.0.1:$2$3")
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  echo "$1|$rps|$p50|$p99|${non2xx:-0}"
}

MEM=$(free_port); gateway memory "$MEM" '[store]
kind = "memory"'
REDIS=$(free_port); gateway redis "$REDIS" "[store]
kind = \"redis\"
url = \"redis://127.0.0.1:6379\"
key_prefix = \"bench-login-$$\""

M_PLAIN=$(load "memory store, route without login protection" "$MEM" /plain)
M_LOGIN=$(load "memory store, [[login]] route" "$MEM" /login)
R_PLAIN=$(load "Redis store, route without login protection" "$REDIS" /plain)
R_LOGIN=$(load "Redis store, [[login]] route" "$REDIS" /login)
redis-cli --scan --pattern "bench-login-$$:*" | xargs -r -n 500 redis-cli del >/dev/null || true

echo "wrk -t2 -c$CONNECTIONS -d${SECONDS_PER_RUN}s over loopback, POST of a 90-byte JSON login naming a new account each time; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); $(date -u +%Y-%m-%d)"
echo
echo "| set-up | requests/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
for row in "$M_PLAIN" "$M_LOGIN" "$R_PLAIN" "$R_LOGIN"; do
  IFS='|' read -r label rps p50 p99 non <<<"$row"
  echo "| $label | $rps | $p50 | $p99 | $non |"
done
field() { cut -d'|' -f"$2" <<<"$1"; }
# A ratio of two wrk figures, with their units (us, ms, s) read.
ratio() {
  python3 -c '
import re, sys
def value(t):
    n, unit = re.fullmatch(r"([0-9.]+)([a-z]*)", t).groups()
    return float(n) * {"": 1, "us": 1e-6, "ms": 1e-3, "s": 1}[unit]
print(f"{value(sys.argv[1]) / value(sys.argv[2]):.2f}")' "$1" "$2"
}
echo
echo "| ratio [[login]] route / route without it | throughput | p50 latency |"
echo "|---|---|---|"
echo "| memory store | $(ratio "$(field "$M_LOGIN" 2)" "$(field "$M_PLAIN" 2)") | $(ratio "$(field "$M_LOGIN" 3)" "$(field "$M_PLAIN" 3)") |"
echo "| Redis store | $(ratio "$(field "$R_LOGIN" 2)" "$(field "$R_PLAIN" 2)") | $(ratio "$(field "$R_LOGIN" 3)" "$(field "$R_PLAIN" 3)") |"
