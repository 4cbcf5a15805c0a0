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
