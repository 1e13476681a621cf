#!/usr/bin/env bash
# CI on agents, against the same pipeline on the server's own host, in one
# go on this machine: one server on PostgreSQL, RUNS runs of 3 jobs of one
# trivial step each, with the jobs
#   - on the server (no runs_on:), the peer;
#   - on 1 agent (runs_on: {}, any agent);
#   - on 8 agents.
# For each: runs a minute (first run queued → last run ended), the claim
# latency (from the moment a job is offered and its agent is free, that is
# done with its previous job, to the claim: p50 and p99, from the store),
# and the server's own CPU a run (user + system from /proc, without its
# children: git and the steps). Needs root (PostgreSQL is started as its own
# user, as .ci/postgres.sh does).
#
#   bench/agents.sh [RUNS]      (default 500; builds the release binary first)
# Prints a Markdown table for docs/benchmarks.md.
set -euo pipefail
runs=${1:-500}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --locked -p sluice --manifest-path "$root/Cargo.toml" >&2
sluice="$root/target/release/sluice"
work=$(mktemp -d)
chmod 755 "$work"
eval "$("$root/.ci/postgres.sh" "$work/pg")"
pg=${SLUICE_TEST_POSTGRES%/postgres}
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
ticks=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

sql() { psql -qtA "$pg/$1" -c "$2"; }

scenario() { # $1 name, $2 agents (0: jobs on the server)
  local name=$1 agents=$2 dir="$work/$1"
  mkdir -p "$dir"
  createdb -h 127.0.0.1 -p "${pg##*:}" -U postgres "$name"
  "$sluice" serve --data-dir "$dir/data" --listen 127.0.0.1:0 --database "$pg/$name" \
    --poll-interval 1h --isolation none >"$dir/out" 2>"$dir/err" &
  local server=$!
  for _ in $(seq 200); do grep -q 'listening on' "$dir/out" 2>/dev/null && break; sleep 0.05; done
  export SLUICE_SERVER=$(sed -n 's/.*listening on //p' "$dir/out")
  export SLUICE_TOKEN=$(cat "$dir/data/initial-admin-token")
  export SLUICE_DATA_DIR="$dir/data"
  for i in $(seq "$agents"); do
    local token
    token=$("$sluice" token create --name "agent-$i" --role agent 2>/dev/null | grep -o 'slc_[0-9a-f_]*')
    SLUICE_TOKEN=$token "$sluice" agent --name "agent-$i" --data-dir "$dir/agents" \
      >"$dir/agent-$i.log" 2>&1 &
  done
  local runs_on=""
  [ "$agents" -gt 0 ] && runs_on="      runs_on: {}"
  git init -q -b main "$dir/repo"
  git -C "$dir/repo" config user.email bench@example.com
  git -C "$dir/repo" config user.name bench
  {
    printf 'service: bench\npipeline:\n  jobs:\n'
    for job in one two three; do
      printf '    %s:\n%s\n      steps:\n        - run: "true"\n' "$job" "$runs_on"
    done
  } >"$dir/repo/sluice.yaml"
  git -C "$dir/repo" add -A && git -C "$dir/repo" commit -q -m "run 1"
  local before
  before=$(cpu_ticks "$server")
  "$sluice" repo add "$dir/repo" >/dev/null
  for i in $(seq 2 "$runs"); do
    git -C "$dir/repo" commit -q --allow-empty -m "run $i"
  done
  for _ in $(seq 6000); do
    [ "$(sql "$name" "SELECT COUNT(*) FROM runs WHERE finished_at IS NOT NULL")" -ge "$runs" ] && break
    sleep 0.1
  done
  local after failed span latency
  after=$(cpu_ticks "$server")
  failed=$(sql "$name" "SELECT COUNT(*) FROM runs WHERE status <> 'success'")
  span=$(sql "$name" "SELECT MAX(finished_at) - MIN(created_at) FROM runs")
  latency="– | –"
  if [ "$agents" -gt 0 ]; then
    latency=$(sql "$name" "WITH claims AS (
        SELECT a.claimed_at - GREATEST(l.created_at, COALESCE(
                 LAG(a.ended_at) OVER (PARTITION BY a.agent ORDER BY a.claimed_at), 0)) AS waited
        FROM job_attempts a JOIN job_leases l ON l.job_id = a.job_id)
      SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY waited)) || ' ms | ' ||
             round(percentile_cont(0.99) WITHIN GROUP (ORDER BY waited)) || ' ms'
      FROM claims")
  fi
  awk -v n="$runs" -v span="$span" -v cpu=$((after - before)) -v hz="$ticks" \
    -v name="$name" -v failed="$failed" -v latency="$latency" 'BEGIN {
      printf "| %s | %d (%d not green) | %.0f | %s | %.1f ms |\n",
        name, n, failed, n / (span / 60000), latency, cpu * 1000 / hz / n
    }'
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
}

echo "| jobs run | runs | runs a minute | claim p50 | claim p99 | server CPU a run |"
echo "| --- | --- | --- | --- | --- | --- |"
scenario on_the_server 0
scenario on_1_agent 1
scenario on_8_agents 8
