#!/usr/bin/env bash
# Sluice's proxy against nginx and HAProxy, on this machine, in one go.
#
#   bench/proxy.sh [SECONDS]      (default 10; needs wrk, nginx, haproxy, python3)
#
# The same two backends (nginx serving a small response on two ports), the
# same weights (B 10%), the same wrk load: 2 threads, 64 keep-alive
# connections. Reports requests per second and p50/p99 latency for each
# proxy, the CPU time each spends on a request (user and system, from
# /proc), the ratios of Sluice to each peer, and Sluice's memory with 10,000
# idle keep-alive connections.
set -euo pipefail
seconds=${1:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
for tool in wrk nginx haproxy python3; do
  command -v $tool >/dev/null || { echo "$tool is needed (apt-get install wrk nginx haproxy)" >&2; exit 1; }
done
cargo build --release --locked -p sluice --manifest-path "$root/Cargo.toml" >&2
sluice="$root/target/release/sluice"
work=$(mktemp -d)
pids=()
trap 'kill ${pids[@]} 2>/dev/null; sleep 0.2; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

a=$(port); b=$(port); s_port=$(port); n_port=$(port); h_port=$(port)
mkdir -p "$work/nginx"
cat >"$work/backends.conf" <<CONF
worker_processes 1;
pid $work/backends.pid;
error_log $work/backends.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$a; location / { return 200 "hello from a\n"; } }
  server { listen 127.0.0.1:$b; location / { return 200 "hello from b\n"; } }
}
CONF
nginx -c "$work/backends.conf" -g 'daemon off;' -p "$work/nginx" & pids+=($!)
cat >"$work/proxy.conf" <<CONF
worker_processes 2;
pid $work/proxy.pid;
error_log $work/proxy.err;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backends { server 127.0.0.1:$a weight=9; server 127.0.0.1:$b weight=1; keepalive 128; }
  server {
    listen 127.0.0.1:$n_port;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -c "$work/proxy.conf" -g 'daemon off;' -p "$work/nginx" & pids+=($!)
cat >"$work/haproxy.cfg" <<CONF
global
  maxconn 8000
  nbthread 2
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:$h_port
  default_backend bk
backend bk
  balance leastconn
  server a 127.0.0.1:$a weight 90
  server b 127.0.0.1:$b weight 10
CONF
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & haproxy_pid=$!; pids+=($haproxy_pid)
ulimit -n 65536 2>/dev/null || true
"$sluice" proxy --listen "127.0.0.1:$s_port" --a "127.0.0.1:$a" --b "127.0.0.1:$b" --weight 10 >/dev/null 2>&1 & sluice_pid=$!; pids+=($sluice_pid)
for p in $a $b $s_port $n_port $h_port; do wait_port $p; done

cpu() { # utime and stime (clock ticks) summed over pids
  local u=0 t=0 pid a b
  for pid in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$pid/stat"); u=$((u + a)); t=$((t + b)); done
  echo "$u $t"
}
measure() { # $1 name, $2 port, $3... the proxy's pids → "rps p50_ms p99_ms user_us sys_us" (CPU a request)
  local name=$1 port=$2; shift 2
  wrk -t2 -c64 -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1
  local u0 s0 u1 s1
  read -r u0 s0 <<<"$(cpu "$@")"
  wrk -t2 -c64 -d"${seconds}s" --latency "http://127.0.0.1:$port/" >"$work/$name.txt"
  read -r u1 s1 <<<"$(cpu "$@")"
  local rps p50 p99 requests
  rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p' "$work/$name.txt")
  requests=$(awk '/requests in/ {print $1}' "$work/$name.txt")
  p50=$(awk '/ 50%/ {print $2}' "$work/$name.txt")
  p99=$(awk '/ 99%/ {print $2}' "$work/$name.txt")
  echo "$rps $(ms "$p50") $(ms "$p99") $(per_request $((u1 - u0)) "$requests") $(per_request $((s1 - s0)) "$requests")"
}
tick=$(getconf CLK_TCK)
per_request() { python3 -c "print(round($1 * 1e6 / $tick / $2, 2))"; }
ms() { python3 -c "v='$1'; print(round(float(v[:-2])/1000,3) if v.endswith('us') else round(float(v[:-2]),3) if v.endswith('ms') else round(float(v[:-1])*1000,3))"; }
nginx_workers=$(pgrep -P "$(cat "$work/proxy.pid")" | tr '\n' ' ')
read -r s_rps s_p50 s_p99 s_user s_sys <<<"$(measure sluice $s_port $sluice_pid)"
read -r n_rps n_p50 n_p99 n_user n_sys <<<"$(measure nginx $n_port $nginx_workers)"
read -r h_rps h_p50 h_p99 h_user h_sys <<<"$(measure haproxy $h_port $haproxy_pid)"

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
before=$(rss $sluice_pid)
python3 - "$s_port" <<'PY' &
import socket, sys, time
port = int(sys.argv[1])
held = []
for i in range(10000):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    s.recv(4096)
    held.append(s)
time.sleep(4)
PY
holder=$!
sleep 3
during=$(rss $sluice_pid)
wait $holder || true

ratio() { python3 -c "print(round(($1)/($2), 2))"; }
cat <<MD
Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); wrk -t2 -c64 -d${seconds}s, keep-alive, a 13-byte answer, B at 10%.

| proxy | requests/s | p50 | p99 | CPU a request (user + system) |
| --- | --- | --- | --- | --- |
| Sluice | $s_rps | ${s_p50} ms | ${s_p99} ms | $s_user + $s_sys µs |
| nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') | $n_rps | ${n_p50} ms | ${n_p99} ms | $n_user + $n_sys µs |
| HAProxy $(haproxy -v | head -1 | awk '{print $3}') | $h_rps | ${h_p50} ms | ${h_p99} ms | $h_user + $h_sys µs |

| ratio | requests/s | p99 | CPU a request |
| --- | --- | --- | --- |
| Sluice / nginx | $(ratio $s_rps $n_rps) | $(ratio $s_p99 $n_p99) | $(ratio "$s_user + $s_sys" "$n_user + $n_sys") |
| Sluice / HAProxy | $(ratio $s_rps $h_rps) | $(ratio $s_p99 $h_p99) | $(ratio "$s_user + $s_sys" "$h_user + $h_sys") |

Sluice's memory: $((before / 1024)) MiB resident before, $((during / 1024)) MiB with 10,000 idle keep-alive connections ($(( (during - before) * 1024 / 10000 )) bytes a connection).
MD
