#!/usr/bin/env bash
# Sluice's proxy against nginx, HAProxy and Caddy, on this machine, in one go,
# over plain HTTP and over TLS.
#
#   bench/proxy.sh [SECONDS]      (default 10; needs wrk, nginx, haproxy, caddy, openssl, python3)
#
# The same two backends (nginx serving a small response on two ports), the
# same weights (B 10%), the same wrk load: 2 threads, 64 keep-alive
# connections; over TLS, the same certificate and key (ECDSA P-256) for all
# four, TLS 1.3. Reports requests per second and p50/p99 latency for each
# proxy, the CPU time each spends on a request (user and system, from
# /proc), the ratios of Sluice to each peer, and Sluice's memory with 10,000
# idle keep-alive connections.
set -euo pipefail
seconds=${1:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
for tool in wrk nginx haproxy caddy openssl python3; do
  command -v $tool >/dev/null || { echo "$tool is needed (apt-get install wrk nginx haproxy caddy openssl)" >&2; exit 1; }
done
cargo build --release --locked -p sluice --manifest-path "$root/Cargo.toml" >&2
sluice="$root/target/release/sluice"
work=$(mktemp -d)
pids=()
trap 'kill ${pids[@]} 2>/dev/null; sleep 0.2; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$work/key.pem" -out "$work/cert.pem" -subj /CN=localhost \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/both.pem"

a=$(port); b=$(port)
s_port=$(port); n_port=$(port); h_port=$(port); c_port=$(port)
s_tls=$(port); n_tls=$(port); h_tls=$(port); c_tls=$(port)
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
    listen 127.0.0.1:$n_tls ssl;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.3;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -c "$work/proxy.conf" -g 'daemon off;' -p "$work/nginx" & pids+=($!)
cat >"$work/haproxy.cfg" <<CONF
global
  maxconn 8000
  nbthread 2
  ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:$h_port
  bind 127.0.0.1:$h_tls ssl crt $work/both.pem alpn http/1.1
  default_backend bk
backend bk
  balance leastconn
  server a 127.0.0.1:$a weight 90
  server b 127.0.0.1:$b weight 10
CONF
haproxy -f "$work/haproxy.cfg" -db >/dev/null 2>&1 & haproxy_pid=$!; pids+=($haproxy_pid)
# Caddy 2.6 has no weighted policy: A listed nine times, B once, round robin.
a9=$(for _ in 1 2 3 4 5 6 7 8 9; do printf '127.0.0.1:%s ' "$a"; done)
cat >"$work/Caddyfile" <<CONF
{
	admin off
	auto_https off
}
http://127.0.0.1:$c_port {
	reverse_proxy $a9 127.0.0.1:$b {
		lb_policy round_robin
		transport http {
			keepalive_idle_conns 128
			keepalive_idle_conns_per_host 128
		}
	}
}
https://127.0.0.1:$c_tls {
	tls $work/cert.pem $work/key.pem {
		protocols tls1.3
	}
	reverse_proxy $a9 127.0.0.1:$b {
		lb_policy round_robin
		transport http {
			keepalive_idle_conns 128
			keepalive_idle_conns_per_host 128
		}
	}
}
CONF
GOMAXPROCS=2 caddy run --config "$work/Caddyfile" --adapter caddyfile >/dev/null 2>&1 & caddy_pid=$!; pids+=($caddy_pid)
ulimit -n 65536 2>/dev/null || true
"$sluice" proxy --listen "127.0.0.1:$s_port" --a "127.0.0.1:$a" --b "127.0.0.1:$b" --weight 10 >/dev/null 2>&1 & sluice_pid=$!; pids+=($sluice_pid)
"$sluice" proxy --listen "127.0.0.1:$s_tls" --a "127.0.0.1:$a" --b "127.0.0.1:$b" --weight 10 \
  --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" >/dev/null 2>&1 & sluice_tls_pid=$!; pids+=($sluice_tls_pid)
for p in $a $b $s_port $n_port $h_port $c_port $s_tls $n_tls $h_tls $c_tls; do wait_port $p; done

cpu() { # utime and stime (clock ticks) summed over pids
  local u=0 t=0 pid a b
  for pid in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$pid/stat"); u=$((u + a)); t=$((t + b)); done
  echo "$u $t"
}
measure() { # $1 name, $2 URL, $3... the proxy's pids → "rps p50_ms p99_ms user_us sys_us" (CPU a request)
  local name=$1 url=$2; shift 2
  wrk -t2 -c64 -d2s "$url" >/dev/null 2>&1
  local u0 s0 u1 s1
  read -r u0 s0 <<<"$(cpu "$@")"
  wrk -t2 -c64 -d"${seconds}s" --latency "$url" >"$work/$name.txt"
  read -r u1 s1 <<<"$(cpu "$@")"
  if grep -q "Non-2xx\|Socket errors" "$work/$name.txt"; then
    echo "$name: errors under load:" >&2; cat "$work/$name.txt" >&2
  fi
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
ratio() { python3 -c "print(round(($1)/($2), 2))"; }
nginx_workers=$(pgrep -P "$(cat "$work/proxy.pid")" | tr '\n' ' ')

declare -A result
for scheme in http https; do
  if [ $scheme = http ]; then ports=($s_port $n_port $h_port $c_port); else ports=($s_tls $n_tls $h_tls $c_tls); fi
  spid=$sluice_pid; [ $scheme = https ] && spid=$sluice_tls_pid
  result[sluice.$scheme]=$(measure "sluice-$scheme" "$scheme://127.0.0.1:${ports[0]}/" $spid)
  result[nginx.$scheme]=$(measure "nginx-$scheme" "$scheme://127.0.0.1:${ports[1]}/" $nginx_workers)
  result[haproxy.$scheme]=$(measure "haproxy-$scheme" "$scheme://127.0.0.1:${ports[2]}/" $haproxy_pid)
  result[caddy.$scheme]=$(measure "caddy-$scheme" "$scheme://127.0.0.1:${ports[3]}/" $caddy_pid)
done

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

version() {
  case $1 in
    sluice) echo "Sluice" ;;
    nginx) echo "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')" ;;
    haproxy) echo "HAProxy $(haproxy -v | head -1 | awk '{print $3}')" ;;
    caddy) echo "Caddy $(caddy version | awk '{print $1}')" ;;
  esac
}
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); wrk -t2 -c64 -d${seconds}s, keep-alive, a 13-byte answer, B at 10%."
for scheme in http https; do
  echo
  [ $scheme = http ] && echo "Plain HTTP:" || echo "TLS 1.3 (ECDSA P-256, the same certificate for all):"
  echo
  echo "| proxy | requests/s | p50 | p99 | CPU a request (user + system) |"
  echo "| --- | --- | --- | --- | --- |"
  for proxy in sluice nginx haproxy caddy; do
    read -r rps p50 p99 user sys <<<"${result[$proxy.$scheme]}"
    echo "| $(version $proxy) | $rps | $p50 ms | $p99 ms | $user + $sys µs |"
  done
  echo
  echo "| ratio | requests/s | p99 | CPU a request |"
  echo "| --- | --- | --- | --- |"
  read -r s_rps _ s_p99 s_user s_sys <<<"${result[sluice.$scheme]}"
  for proxy in nginx haproxy caddy; do
    read -r rps _ p99 user sys <<<"${result[$proxy.$scheme]}"
    echo "| Sluice / $(version $proxy | awk '{print $1}') | $(ratio $s_rps $rps) | $(ratio $s_p99 $p99) | $(ratio "$s_user + $s_sys" "$user + $sys") |"
  done
done
echo
echo "Sluice's memory: $((before / 1024)) MiB resident before, $((during / 1024)) MiB with 10,000 idle keep-alive connections ($(( (during - before) * 1024 / 10000 )) bytes a connection)."
