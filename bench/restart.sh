#!/usr/bin/env bash
# What a server restart costs an environment under load, on this machine:
# a hand-over (SIGUSR2, an upgrade) and a kill -9, each followed by a start,
# against a clean stop and start (the instances are stopped, then started
# again), for a service that takes STARTUP seconds to start. LOCAL_AGENT
# `on` (the default with SQLite): the environment runs on the server's
# local agent, which goes on serving; `off`: in the server's process (the
# instances are kept and adopted, the entry point's sockets kept by
# sluice keep-sockets).
#
#   bench/restart.sh [ROUNDS] [STARTUP] [LOCAL_AGENT]   (default 5, 2 s, on; needs python3)
#
# For each round: the longest time the entry point gave no successful
# answer, and how many requests failed, while a client sends one request
# after another (a new connection each, 10 ms apart at most).
set -euo pipefail
rounds=${1:-5}
startup=${2:-2}
local_agent=${3:-on}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --locked -p sluice --manifest-path "$root/Cargo.toml" >&2
sluice="$root/target/release/sluice"
work=$(mktemp -d)
chmod 711 "$work" # as root, instances run as users of their own, who pass through it
# A clean stop at the end stops the instances too.
trap 'kill $(jobs -p) 2>/dev/null; [ -n "${server:-}" ] && kill -TERM "$server" 2>/dev/null && wait "$server"; rm -rf "$work"' EXIT
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
# The server comes back where it was, as a service does: its local agent goes on.
server_port=$(free_port)

start_server() {
  : >"$work/out"
  "$sluice" serve --data-dir "$work/data" --listen "127.0.0.1:$server_port" \
    --local-agent "$local_agent" >"$work/out" 2>>"$work/err" &
  server=$!
  until grep -q 'listening on' "$work/out" 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || { cat "$work/err" >&2; exit 1; }
    sleep 0.02
  done
  export SLUICE_SERVER=$(sed -n 's/.*listening on //p' "$work/out")
}
start_server
export SLUICE_TOKEN=$(cat "$work/data/initial-admin-token")

repo="$work/shop"
git init -q -b main "$repo"
git -C "$repo" config user.email bench@example.com
git -C "$repo" config user.name bench
cp -a "$root/crates/sluice/tests/fixtures/shop/." "$repo"
cat >"$repo/sluice.yaml" <<YAML
service: shop
pipeline:
  jobs:
    unit:
      steps:
        - run: 'true'
  artifact:
    paths: [app/]
run:
  command: exec python3 app/server.py
  ready_timeout: 60s
  health: { path: /healthz, interval: 200ms, timeout: 200ms, healthy: 1, unhealthy: 2 }
environments:
  prod:
    deploy: auto
    instances: 2
    listen: 127.0.0.1:$port
    config: { STARTUP_DELAY: '$startup' }
YAML
git -C "$repo" add -A && git -C "$repo" commit -q -m v1
"$sluice" repo add "$repo" >/dev/null
ready() {
  until "$sluice" status --json 2>/dev/null | json "[e for e in d if e['environment']=='prod' and e['release']==1 and sum(i['healthy'] for i in e['instances'])==2] and 'yes' or ''" | grep -q yes; do sleep 0.1; done
}
ready

# One request after another until told to stop and the entry point
# answers again (60 s at most); prints the longest gap between successes
# (ms) and the failures.
cat >"$work/probe.py" <<'PY'
import sys, time, urllib.request, os
url, stop = sys.argv[1], sys.argv[2]
last_ok, longest, failed, ok = time.monotonic(), 0.0, 0, False
while not (ok and os.path.exists(stop)) and time.monotonic() - last_ok < 60:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            r.read()
        now = time.monotonic()
        longest = max(longest, now - last_ok)
        last_ok, ok = now, True
    except Exception:
        failed += 1
        ok = False
        time.sleep(0.01)
print(f"{longest*1000:.0f} {failed}")
PY

measure() { # how: kill or stop
  rm -f "$work/stop"
  python3 "$work/probe.py" "http://127.0.0.1:$port/" "$work/stop" >"$work/probe.out" &
  probe=$!
  sleep 0.5
  case $1 in
    kill) kill -9 "$server" ;;
    handover) kill -USR2 "$server" ;;
    *) kill -TERM "$server" ;;
  esac
  wait "$server" 2>/dev/null || true
  start_server
  ready
  sleep 0.5
  touch "$work/stop"; wait $probe
}

# (Called in this shell, not a subshell: it replaces $server.)
declare -a hand_gap hand_failed kill_gap kill_failed stop_gap stop_failed
for i in $(seq "$rounds"); do
  measure handover; read -r g f <"$work/probe.out"; hand_gap+=("$g"); hand_failed+=("$f")
  measure kill; read -r g f <"$work/probe.out"; kill_gap+=("$g"); kill_failed+=("$f")
  measure stop; read -r g f <"$work/probe.out"; stop_gap+=("$g"); stop_failed+=("$f")
  echo "round $i: SIGUSR2 ${hand_gap[-1]} ms, kill -9 ${kill_gap[-1]} ms, SIGTERM ${stop_gap[-1]} ms" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
hg=$(median "${hand_gap[@]}"); kg=$(median "${kill_gap[@]}"); sg=$(median "${stop_gap[@]}")
hf=$(median "${hand_failed[@]}"); kf=$(median "${kill_failed[@]}"); sf=$(median "${stop_failed[@]}")
ratio=$(python3 -c "print(f'{$sg/max($kg,1):.1f}')")

cat <<MD
Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr).
Service start-up: ${startup} s (STARTUP_DELAY); 2 instances; medians of ${rounds} rounds; local agent: ${local_agent}.

| restart | longest time without an answer | failed requests | each round (ms) | each round (failed) |
| --- | --- | --- | --- | --- |
| SIGUSR2 (hand-over), then start | ${hg} ms | ${hf} | ${hand_gap[*]} | ${hand_failed[*]} |
| kill -9, then start (instances kept) | ${kg} ms | ${kf} | ${kill_gap[*]} | ${kill_failed[*]} |
| SIGTERM, then start (instances started again) | ${sg} ms | ${sf} | ${stop_gap[*]} | ${stop_failed[*]} |

Keeping the instances makes a kill -9 restart's outage ${ratio}× shorter.
MD
