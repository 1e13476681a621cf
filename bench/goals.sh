#!/usr/bin/env bash
# What counting goals costs the entry point, on this machine, in one go:
# the memory a tracked user takes (1,000,000 users), and requests per second
# through `sluice proxy` with goals counted and without, under the same wrk
# load whose requests come from 100,000 users with cookies (B at 10%).
#
#   bench/goals.sh [SECONDS]      (default 10; needs wrk, nginx, python3)
set -euo pipefail
seconds=${1:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
for tool in wrk nginx python3; do
  command -v $tool >/dev/null || { echo "$tool is needed (apt-get install wrk nginx)" >&2; exit 1; }
done
cargo build --release --locked -p sluice --manifest-path "$root/Cargo.toml" >&2
cargo build --release --locked -p sluice-proxy --example goal_memory --manifest-path "$root/Cargo.toml" >&2
echo "Memory: $("$root/target/release/examples/goal_memory" 1000000)"

sluice="$root/target/release/sluice"
work=$(mktemp -d)
pids=()
trap 'kill ${pids[@]} 2>/dev/null; sleep 0.2; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
a=$(port); b=$(port); off=$(port); on=$(port)
mkdir -p "$work/nginx"
cat >"$work/backends.conf" <<CONF
worker_processes 1;
pid $work/backends.pid;
error_log $work/backends.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$a; location / { add_header Sluice-Goal "signup"; return 200 "hello from a\n"; } }
  server { listen 127.0.0.1:$b; location / { add_header Sluice-Goal "signup"; return 200 "hello from b\n"; } }
}
CONF
nginx -c "$work/backends.conf" -g 'daemon off;' -p "$work/nginx" & pids+=($!)
ulimit -n 65536 2>/dev/null || true
"$sluice" proxy --listen "127.0.0.1:$off" --a "127.0.0.1:$a" --b "127.0.0.1:$b" --weight 10 >/dev/null 2>&1 & off_pid=$!; pids+=($off_pid)
"$sluice" proxy --listen "127.0.0.1:$on" --a "127.0.0.1:$a" --b "127.0.0.1:$b" --weight 10 \
  --goal "checkout=GET /" --goal signup >/dev/null 2>&1 & on_pid=$!; pids+=($on_pid)
for p in $a $b $off $on; do wait_port $p; done
# Each request from one of 100,000 users, by the sticky cookie.
cat >"$work/users.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, { ["Cookie"] = "sluice_key=user-" .. (counter % 100000) })
end
LUA
cpu() { read -r u s < <(awk '{print $14, $15}' "/proc/$1/stat"); echo $((u + s)); }
tick=$(getconf CLK_TCK)
measure() { # $1 port, $2 pid → "rps p99 cpu_us"
  wrk -t2 -c64 -d2s -s "$work/users.lua" "http://127.0.0.1:$1/" >/dev/null 2>&1
  local c0 c1
  c0=$(cpu "$2")
  wrk -t2 -c64 -d"${seconds}s" --latency -s "$work/users.lua" "http://127.0.0.1:$1/" >"$work/out.txt"
  c1=$(cpu "$2")
  local rps p99 requests
  rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p' "$work/out.txt")
  requests=$(awk '/requests in/ {print $1}' "$work/out.txt")
  p99=$(awk '/ 99%/ {print $2}' "$work/out.txt")
  echo "$rps $p99 $(python3 -c "print(round(($c1 - $c0) * 1e6 / $tick / $requests, 2))")"
}
read -r off_rps off_p99 off_cpu <<<"$(measure $off $off_pid)"
read -r on_rps on_p99 on_cpu <<<"$(measure $on $on_pid)"
cat <<MD
wrk -t2 -c64 -d${seconds}s, keep-alive, 100,000 users by cookie, B at 10%; with goals: a request goal on every page and a Sluice-Goal header on every answer.

| sluice proxy | requests/s | p99 | CPU a request |
| --- | --- | --- | --- |
| without goals | $off_rps | $off_p99 | $off_cpu µs |
| with 2 goals | $on_rps | $on_p99 | $on_cpu µs |

With goals / without: $(python3 -c "print(round($on_rps / $off_rps, 3))") of the requests per second, $(python3 -c "print(round($on_cpu / $off_cpu, 3))") of the CPU a request.
MD
