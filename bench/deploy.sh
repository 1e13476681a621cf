#!/usr/bin/env bash
# A rolling deployment of 4 instances under load, measured on this machine.
#
#   bench/deploy.sh [SECONDS_OF_LOAD]     (default 30; needs wrk and python3)
#
# - sluice's overhead: the deployment's duration (as sluice records it) minus
#   four times the service's own start-up time (process start until its
#   health check answers, measured here the same way without sluice);
# - requests lost: non-2xx answers and socket errors that wrk counts while
#   the deployment runs behind the environment's entry point (must be 0).
set -euo pipefail
seconds=${1:-30}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --locked -p sluice --manifest-path "$root/Cargo.toml" >&2
sluice="$root/target/release/sluice"
work=$(mktemp -d)
# Waited for: a server's clean stop stops its local agent, whose files are in $work.
trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$work"' EXIT
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# The service's own start-up time, without sluice: median of 5.
startups=()
for i in 1 2 3 4 5; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  t0=$(date +%s%N)
  PORT=$port DATA_DIR=$work python3 "$root/crates/sluice/tests/fixtures/shop/app/server.py" &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do sleep 0.005; done
  startups+=($(( ($(date +%s%N) - t0) / 1000000 )))
  kill $pid; wait $pid 2>/dev/null || true
done
startup=$(printf '%s\n' "${startups[@]}" | sort -n | sed -n 3p)

"$sluice" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
until grep -q 'listening on' "$work/out" 2>/dev/null; do sleep 0.05; done
export SLUICE_SERVER=$(sed -n 's/.*listening on //p' "$work/out")
export SLUICE_TOKEN=$(cat "$work/data/initial-admin-token")

repo="$work/shop"
git init -q -b main "$repo"
git -C "$repo" config user.email bench@example.com
git -C "$repo" config user.name bench
cp -a "$root/crates/sluice/tests/fixtures/shop/." "$repo"
cat >"$repo/sluice.yaml" <<'YAML'
service: shop
pipeline:
  jobs:
    unit:
      steps:
        - run: python3 -m unittest discover -s tests -q
  artifact:
    paths: [app/]
run:
  command: exec python3 app/server.py
  health: { path: /healthz, interval: 500ms, timeout: 500ms, healthy: 1, unhealthy: 2 }
  config_files:
    - { template: config/app.toml.tmpl, to: app.toml }
environments:
  dev:
    deploy: auto
    instances: 4
    listen: 127.0.0.1:0
    config: { GREETING: bench }
YAML
git -C "$repo" add -A && git -C "$repo" commit -q -m v1
"$sluice" repo add "$repo" >/dev/null
wait_release() {
  until "$sluice" status --json | json "[e for e in d if e['environment']=='dev' and e['release']==$1 and sum(i['healthy'] for i in e['instances'])==4 and len(e['instances'])==4] and 'yes' or ''" | grep -q yes; do sleep 0.2; done
}
wait_release 1
listen=$("$sluice" status --json | json "[e for e in d if e['environment']=='dev'][0]['listen']")

wrk -t2 -c32 -d"${seconds}s" "http://$listen/" >"$work/wrk.txt" &
wrk_pid=$!
sleep $(( seconds / 4 ))
echo v2 >"$repo/app/VERSION"
git -C "$repo" add -A && git -C "$repo" commit -q -m v2
wait_release 2
wait $wrk_pid

deployment=$("$sluice" deployments --service shop --env dev --json | json "[x for x in d if x['release']==2][0]")
took=$(echo "$deployment" | python3 -c "import ast,sys; d=ast.literal_eval(sys.stdin.read()); print(d['finished_at']-d['created_at'])")
non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: \([0-9]*\).*/\1/p' "$work/wrk.txt"); non2xx=${non2xx:-0}
socket=$(sed -n 's/.*Socket errors: \(.*\)/\1/p' "$work/wrk.txt"); socket=${socket:-none}
requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$work/wrk.txt")
rps=$(sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p' "$work/wrk.txt")
overhead=$(( took - 4 * startup ))

cat <<MD
Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr).

| measure | value |
| --- | --- |
| service start-up (process start → healthy), median of 5 | ${startup} ms |
| rolling deployment of 4 instances, as recorded | ${took} ms |
| sluice's overhead (deployment − 4 × start-up) | ${overhead} ms ($(( overhead / 4 )) ms an instance) |
| requests during the ${seconds} s run (wrk, 32 connections) | ${requests} (${rps}/s) |
| non-2xx answers | ${non2xx} |
| socket errors | ${socket} |
MD
