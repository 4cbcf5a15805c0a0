# Shared by the benchmark scripts (sourced, not run): package installs and loopback ports.

# Whether a command exists (nginx lives in /usr/sbin, often off a user's PATH).
need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

# Installs Debian packages: `ensure COMMAND... -- PACKAGE...` when a command is missing.
ensure() {
  local commands=() missing=0
  while [ "$1" != "--" ]; do commands+=("$1"); shift; done
  shift
  for c in "${commands[@]}"; do need "$c" || missing=1; done
  [ "$missing" = 0 ] && return 0
  echo "installing $*..." >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$@" >/dev/null
}

# A port free on 127.0.0.1 when asked.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (5 s at most) until something listens on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2
  exit 1
}

# A scratch folder for one benchmark run, in WORK. On exit, the nginx started with
# ok_nginx is stopped, every process whose pid is in a $WORK/*.pid file is killed, and
# the folder is removed.
bench_workdir() {
  WORK=$(mktemp -d)
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  trap bench_cleanup EXIT
}
bench_cleanup() {
  [ -f "$WORK/nginx.conf" ] && "$NGINX" -c "$WORK/nginx.conf" -s quit 2>/dev/null || true
  for p in $(cat "$WORK"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  rm -rf "$WORK"
}

# nginx (one worker, no logs) answering 200 'ok' to every request on 127.0.0.1:PORT,
# as cheaply as an upstream or a webhook receiver can be. Needs bench_workdir first.
ok_nginx() {
  cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log /dev/null crit;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/body; proxy_temp_path $WORK/proxy;
  fastcgi_temp_path $WORK/fcgi; uwsgi_temp_path $WORK/uwsgi; scgi_temp_path $WORK/scgi;
  server { listen 127.0.0.1:$1; location / { return 200 'ok'; } }
}
CONF
  "$NGINX" -c "$WORK/nginx.conf"
  wait_port "$1"
}

# Writes FILE: ratewarden on 127.0.0.1:PORT in front of 127.0.0.1:UPSTREAM, with one rule
# over every path at RATE and BURST.
bench_ratewarden_toml() { # file port upstream rate burst
  cat >"$1" <<CONF
[server]
listen = "127.0.0.1:$2"
upstream = "http://127.0.0.1:$3"
[[rules]]
name = "bench"
rate = "$4"
burst = $5
CONF
}

# Writes FILE: the alerting benches' gateway on 127.0.0.1:PORT (admin on ADMIN) in front
# of 127.0.0.1:UPSTREAM. Every request comes through a trusted proxy (127.0.0.1) naming
# its client in X-Forwarded-For, and each client is admitted once an hour, so a flood
# is nearly all 429s. EXTRA (the [abuse] section, or nothing) is appended.
bench_flood_toml() { # file port admin upstream extra
  cat >"$1" <<CONF
[server]
listen = "127.0.0.1:$2"
upstream = "http://127.0.0.1:$4"
admin_listen = "127.0.0.1:$3"
[clients]
trusted_proxies = ["127.0.0.1/32"]
[[rules]]
name = "api"
match = { path_prefix = "/api/" }
rate = "1/h"
burst = 1
$5
CONF
}

# The [abuse] section of "alerting on": an alert at a client's 3rd violation, one per
# client per 10 minutes, to a webhook at 127.0.0.1:RECEIVER and to the log.
bench_abuse_section() { # receiver port
  cat <<CONF
[abuse]
window = "1h"
alert_after = 3
cooldown = "10m"
[[alerts]]
kind = "webhook"
url = "http://127.0.0.1:$1/hooks"
[[alerts]]
kind = "log"
CONF
}

# The value of the first sample of METRIC (a name with its labels, as printed) on the
# admin port ADMIN.
bench_metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" 'index($0, m) == 1 {print $NF}' | head -1; }
