#!/usr/bin/env bash
# Route changes reaching every entry point, against a peer, in one go on this
# machine. Sluice: one server on PostgreSQL, 8 agents (processes, each with
# an address of its own on loopback, 127.0.0.11–18, as hosts would have),
# prod on their hosts with one instance and one entry point on each. A route
# change is one instance's health flipping (its /healthz answers 503 while a
# file exists in its data directory): the server's table changes, and each
# host's entry point is told by the answer to its long poll. Measured, from
# the server's debug log: from the first answer carrying the new table to
# each host's report that it routes by it (what a drain waits for), and per
# change the slowest of the 8 hosts.
# The peer: 8 nginx (one per address), given a change by rewriting each
# one's configuration and `nginx -s reload`, timed until every one answers
# by the new configuration (polled every millisecond).
#
#   bench/routes.sh [CHANGES]   (default 200; builds the release binary first)
# Prints Markdown tables for docs/benchmarks.md. Needs root (PostgreSQL is
# started as its own user, as .ci/postgres.sh does), nginx and python3.
# BENCH_KEEP=1 keeps the work directory (the logs) and says where.
set -euo pipefail
changes=${1:-200}
hosts=8
root=$(cd "$(dirname "$0")/.." && pwd)
for tool in nginx python3 psql; do
  command -v $tool >/dev/null || { echo "$tool is needed (apt-get install nginx python3 postgresql)" >&2; exit 1; }
done
cargo build --release --locked -p sluice --manifest-path "$root/Cargo.toml" >&2
sluice="$root/target/release/sluice"
work=$(mktemp -d)
chmod 755 "$work"
eval "$("$root/.ci/postgres.sh" "$work/pg")"
pg=${SLUICE_TEST_POSTGRES%/postgres}
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
cleanup() {
  for conf in "$work"/nginx-*/nginx.conf; do
    [ -f "$conf" ] && nginx -c "$conf" -s stop 2>/dev/null || true
  done
  kill $(jobs -p) 2>/dev/null || true
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# --- Sluice -----------------------------------------------------------------
dir="$work/sluice"
mkdir -p "$dir"
createdb -h 127.0.0.1 -p "${pg##*:}" -U postgres routes
SLUICE_LOG=info,sluice_deploy::hosts=debug "$sluice" serve --data-dir "$dir/data" \
  --listen 127.0.0.1:0 --database "$pg/routes" --poll-interval 1h --isolation none \
  >"$dir/out" 2>"$dir/err" &
for _ in $(seq 200); do grep -q 'listening on' "$dir/out" 2>/dev/null && break; sleep 0.05; done
export SLUICE_SERVER=$(sed -n 's/.*listening on //p' "$dir/out")
export SLUICE_TOKEN=$(cat "$dir/data/initial-admin-token")
export SLUICE_DATA_DIR="$dir/data"
for i in $(seq "$hosts"); do
  token=$("$sluice" token create --name "host-$i" --role agent 2>/dev/null | grep -o 'slc_[0-9a-f_]*')
  SLUICE_TOKEN=$token "$sluice" agent --name "host-$i" --label role=web --address "127.0.0.$((10 + i))" \
    --data-dir "$dir/host-$i" --isolation none >"$dir/host-$i.log" 2>&1 &
done
repo="$dir/repo"
mkdir -p "$repo/app"
cat >"$repo/app/server.py" <<'EOF'
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
DOWN = os.path.join(os.environ["DATA_DIR"], "down")
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        status = 503 if self.path == "/healthz" and os.path.exists(DOWN) else 200
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
EOF
cat >"$repo/sluice.yaml" <<EOF
service: shop
pipeline:
  jobs:
    unit:
      steps:
        - run: "true"
  artifact:
    paths: [app/]
run:
  command: exec python3 app/server.py
  health: { path: /healthz, interval: 100ms, timeout: 100ms, healthy: 1, unhealthy: 1 }
environments:
  prod:
    deploy: auto
    instances: $hosts
    listen: 127.0.0.1:0
    hosts: { labels: { role: web } }
EOF
git init -q -b main "$repo"
git -C "$repo" config user.email bench@example.com
git -C "$repo" config user.name bench
git -C "$repo" add -A && git -C "$repo" commit -q -m v1
"$sluice" repo add "$repo" >/dev/null
log="$dir/err"
applied() { grep -c "routes by the new table" "$log" || true; }
# Every host serves prod, each of its instances healthy.
ready() {
  "$sluice" status --json 2>/dev/null | python3 -c '
import json, sys
envs = json.load(sys.stdin)
prod = [e for e in envs if e["environment"] == "prod"]
ok = prod and len(prod[0].get("host_entry_points", [])) == '"$hosts"' \
  and sum(1 for i in prod[0]["instances"] if i["healthy"]) == '"$hosts"'
sys.exit(0 if ok else 1)'
}
for _ in $(seq 1200); do ready && break; sleep 0.1; done
ready || { echo "prod never came up on the $hosts hosts; see $dir/err" >&2; exit 1; }
# Each change: one host's instance goes down (or back up); wait until every
# host's entry point reported routing by the table that says so.
[ -n "${BENCH_KEEP:-}" ] && echo "kept in $work" >&2
for c in $(seq "$changes"); do
  i=$(( (c - 1) / 2 % hosts + 1 ))
  down="$dir/host-$i/agents/host-$i/host/data/shop/prod/down"
  before=$(applied)
  if [ $((c % 2)) -eq 1 ]; then touch "$down"; else rm -f "$down"; fi
  for _ in $(seq 2000); do
    [ "$(applied)" -ge $((before + hosts)) ] && break
    sleep 0.005
  done
done
python3 - "$log" "$hosts" "$changes" >"$work/sluice.md" <<'EOF'
import re, sys
log, hosts, changes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
per_version = {}
for line in open(log):
    if "routes by the new table" not in line:
        continue
    text = re.sub(r"\x1b\[[0-9;]*m", "", line)
    version = re.search(r"version=(\S+)", text).group(1)
    micros = int(re.search(r"micros=(\d+)", text).group(1))
    per_version.setdefault(version, []).append(micros)
every = sorted(max(v) for v in per_version.values() if len(v) >= hosts)
each = sorted(m for v in per_version.values() for m in v)
def q(values, p):
    return values[min(len(values) - 1, int(p * len(values)))] / 1000
print(f"| Sluice: long poll to {hosts} agents | {len(every)} | {q(each, 0.5):.1f} ms | {q(each, 0.99):.1f} ms | {q(every, 0.5):.1f} ms | {q(every, 0.99):.1f} ms |")
EOF
kill $(jobs -p) 2>/dev/null || true
wait 2>/dev/null || true

# --- nginx --------------------------------------------------------------------
for i in $(seq "$hosts"); do
  mkdir -p "$work/nginx-$i"
done
write_nginx() { # $1 host, $2 version
  cat >"$work/nginx-$1/nginx.conf.new" <<EOF
worker_processes 1;
pid $work/nginx-$1/nginx.pid;
error_log $work/nginx-$1/error.log;
events { worker_connections 64; }
http {
  access_log off;
  server {
    listen 127.0.0.$((10 + $1)):18080;
    location / { add_header x-version $2; return 200 "ok"; }
  }
}
EOF
  mv "$work/nginx-$1/nginx.conf.new" "$work/nginx-$1/nginx.conf"
}
for i in $(seq "$hosts"); do
  write_nginx "$i" 0
  nginx -c "$work/nginx-$i/nginx.conf"
done
python3 - "$work" "$hosts" "$changes" >"$work/nginx.md" <<'EOF'
import http.client, os, subprocess, sys, time
work, hosts, changes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def version(i):
    try:
        c = http.client.HTTPConnection(f"127.0.0.{10 + i}", 18080, timeout=1)
        c.request("GET", "/")
        v = c.getresponse().getheader("x-version")
        c.close()
        return v
    except OSError:
        return None
def write(i, v):
    conf = open(f"{work}/nginx-{i}/nginx.conf").read()
    conf = conf.replace(f"x-version {v - 1};", f"x-version {v};")
    open(f"{work}/nginx-{i}/nginx.conf.new", "w").write(conf)
    os.rename(f"{work}/nginx-{i}/nginx.conf.new", f"{work}/nginx-{i}/nginx.conf")
for i in range(1, hosts + 1):
    while version(i) != "0":
        time.sleep(0.01)
each, every = [], []
for v in range(1, changes + 1):
    start = time.monotonic()
    for i in range(1, hosts + 1):
        write(i, v)
        subprocess.run(["nginx", "-c", f"{work}/nginx-{i}/nginx.conf", "-s", "reload"], check=True)
    waiting = set(range(1, hosts + 1))
    while waiting:
        for i in list(waiting):
            if version(i) == str(v):
                each.append(time.monotonic() - start)
                waiting.discard(i)
        time.sleep(0.001)
    every.append(time.monotonic() - start)
each.sort(); every.sort()
def q(values, p):
    return values[min(len(values) - 1, int(p * len(values)))] * 1000
print(f"| nginx: rewrite + reload {hosts} | {len(every)} | {q(each, 0.5):.1f} ms | {q(each, 0.99):.1f} ms | {q(every, 0.5):.1f} ms | {q(every, 0.99):.1f} ms |")
EOF

echo "| route changes | changes | one entry point p50 | one p99 | all $hosts p50 | all $hosts p99 |"
echo "| --- | --- | --- | --- | --- | --- |"
cat "$work/sluice.md" "$work/nginx.md"
