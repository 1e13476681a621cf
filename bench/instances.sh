#!/usr/bin/env bash
# How many instances one server supervises, and what they cost it, on this
# machine: one server on PostgreSQL runs ENVS environments of PER_ENV
# instances each (the tests' shop service, Python), all deployed by one
# commit. Measured:
#   - the time from the commit to every instance healthy;
#   - at rest, over SECONDS: the server's CPU (user + system, from /proc) and
#     memory, and PostgreSQL's CPU, while it health-checks every instance
#     every 500 ms (the default), supervises them and keeps its entry points;
#   - the peer: HAProxy health-checking the same instances at the same
#     interval over the same time (its CPU), the cheapest way to only watch them;
#   - a kill -9 of the server and a start: the time until every environment
#     is routed again with its instances kept.
# Needs root (PostgreSQL runs as its own user, as .ci/postgres.sh does) and
# haproxy.
#
#   bench/instances.sh [ENVS] [PER_ENV] [SECONDS]   (default 25 4 30)
# Prints a Markdown table for docs/benchmarks.md.
set -euo pipefail
envs=${1:-25}
per_env=${2:-4}
seconds=${3:-30}
total=$((envs * per_env))
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --locked -p sluice --manifest-path "$root/Cargo.toml" >&2
sluice="$root/target/release/sluice"
work=$(mktemp -d)
chmod 711 "$work" # instances run as users of their own, who pass through it
eval "$("$root/.ci/postgres.sh" "$work/pg")"
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
cleanup() {
  set +e
  [ -n "${haproxy:-}" ] && kill "$haproxy" 2>/dev/null
  # A clean stop stops the instances and the socket keeper too.
  [ -n "${server:-}" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ticks=$(getconf CLK_TCK)
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# PostgreSQL's processes: the postmaster and its children.
pg_ticks() {
  local main
  main=$(head -n 1 "$work/pg/postmaster.pid")
  for pid in "$main" $(pgrep -P "$main"); do cpu_ticks "$pid" 2>/dev/null || echo 0; done |
    awk '{s += $1} END {print s}'
}
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
now_ms() { date +%s%3N; }

start_server() {
  : >"$work/out"
  "$sluice" serve --data-dir "$work/data" --listen 127.0.0.1:0 \
    --database "$SLUICE_TEST_POSTGRES" --poll-interval 1h >"$work/out" 2>>"$work/err" &
  server=$!
  until grep -q 'listening on' "$work/out" 2>/dev/null; do
    kill -0 "$server" 2>/dev/null || { cat "$work/err" >&2; exit 1; }
    sleep 0.02
  done
  export SLUICE_SERVER=$(sed -n 's/.*listening on //p' "$work/out")
}
# Every environment at release 1 with all its instances healthy.
all_healthy() {
  "$sluice" status --json 2>/dev/null | json "sum(1 for e in d if e['release']==1 and sum(i['healthy'] for i in e['instances'])==$per_env)" |
    grep -qx "$envs"
}

start_server
export SLUICE_TOKEN=$(cat "$work/data/initial-admin-token")
repo="$work/fleet"
git init -q -b main "$repo"
git -C "$repo" config user.email bench@example.com
git -C "$repo" config user.name bench
cp -a "$root/crates/sluice/tests/fixtures/shop/." "$repo"
{
  cat <<YAML
service: fleet
pipeline:
  jobs:
    unit:
      steps:
        - run: 'true'
  artifact:
    paths: [app/]
run:
  command: exec python3 app/server.py
  ready_timeout: 120s
  health: { path: /healthz }
environments:
YAML
  for i in $(seq "$envs"); do
    printf '  e%s:\n    deploy: auto\n    instances: %s\n    listen: 127.0.0.1:0\n' "$i" "$per_env"
  done
} >"$repo/sluice.yaml"
git -C "$repo" add -A && git -C "$repo" commit -q -m v1
began=$(now_ms)
"$sluice" repo add "$repo" >/dev/null
until all_healthy; do sleep 0.2; done
deployed=$(( $(now_ms) - began ))
echo "deployed $total instances in $deployed ms" >&2

# At rest: the server and PostgreSQL over $seconds.
sleep 5
s0=$(cpu_ticks "$server"); p0=$(pg_ticks)
sleep "$seconds"
s1=$(cpu_ticks "$server"); p1=$(pg_ticks)
server_cpu=$(python3 -c "print(f'{100 * ($s1 - $s0) / $ticks / $seconds:.1f}')")
pg_cpu=$(python3 -c "print(f'{100 * ($p1 - $p0) / $ticks / $seconds:.1f}')")
server_rss=$(rss_mb "$server")
echo "at rest: server ${server_cpu}% of a core, ${server_rss} MB; PostgreSQL ${pg_cpu}%" >&2

# The peer: HAProxy checking the same instances every 500 ms.
ports=$("$sluice" status --json | json "' '.join(str(i['port']) for e in d for i in e['instances'])")
{
  printf 'global\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n'
  # (HAProxy runs only with a listener: one on a socket nobody asks.)
  printf 'frontend unused\n  bind unix@%s/haproxy.sock\n  default_backend instances\n' "$work"
  printf 'backend instances\n  option httpchk GET /healthz\n'
  n=0
  for port in $ports; do n=$((n + 1)); printf '  server i%s 127.0.0.1:%s check inter 500ms\n' "$n" "$port"; done
} >"$work/haproxy.cfg"
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
haproxy=$!
sleep 5
h0=$(cpu_ticks "$haproxy")
sleep "$seconds"
h1=$(cpu_ticks "$haproxy")
kill "$haproxy"; wait "$haproxy" 2>/dev/null || true; haproxy=
haproxy_cpu=$(python3 -c "print(f'{100 * ($h1 - $h0) / $ticks / $seconds:.1f}')")
echo "HAProxy checking them: ${haproxy_cpu}% of a core" >&2

# A kill -9 and a start: every environment routed again, its instances kept.
kill -9 "$server"; wait "$server" 2>/dev/null || true
began=$(now_ms)
start_server
until all_healthy; do sleep 0.05; done
restarted=$(( $(now_ms) - began ))
echo "restarted and kept them in $restarted ms" >&2

per_instance=$(python3 -c "print(f'{$server_cpu / $total:.2f}')")
ratio=$(python3 -c "print(f'{$server_cpu / max($haproxy_cpu, 0.1):.1f}')")
cat <<MD
Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr).
$envs environments × $per_env instances = $total instances, health-checked every 500 ms; at rest over ${seconds} s.

| measure | value |
| --- | --- |
| commit → all $total instances healthy | $deployed ms |
| the server at rest: CPU (% of one core) | $server_cpu % ($per_instance % an instance) |
| the server at rest: memory (RSS) | $server_rss MB |
| PostgreSQL meanwhile: CPU | $pg_cpu % |
| the peer, HAProxy health-checking the same instances: CPU | $haproxy_cpu % (the server: ${ratio}×) |
| kill -9, start → every environment routed, instances kept | $restarted ms |
MD
