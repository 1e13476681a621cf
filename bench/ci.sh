#!/usr/bin/env bash
# CI latency and executor overhead, measured on this machine in one go.
#
#   bench/ci.sh [ROUNDS]        (default 20; builds the release binary first)
#
# 1. commit → first step, hook path: a commit in a hooked local repository
#    until its first step starts (the step writes its start time).
# 2. commit → first step, polling path: the same with the hook removed and
#    the server polling every second.
# 3. executor overhead: a job of 20 trivial steps (`true`) run by sluice,
#    against the same 20 `sh -c true` run by a plain shell script.
# Prints a Markdown table for docs/benchmarks.md.
set -euo pipefail
rounds=${1:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --locked -p sluice --manifest-path "$root/Cargo.toml" >&2
sluice="$root/target/release/sluice"
work=$(mktemp -d)
# Waited for: a server's clean stop stops its local agent, whose files are in $work.
trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$work"' EXIT
now() { date +%s%N; }

start_server() { # $1 data dir, $2 poll interval
  "$sluice" serve --data-dir "$1" --listen 127.0.0.1:0 --poll-interval "$2" >"$1.out" 2>"$1.err" &
  for _ in $(seq 100); do grep -q 'listening on' "$1.out" 2>/dev/null && break; sleep 0.05; done
  export SLUICE_SERVER=$(sed -n 's/.*listening on //p' "$1.out")
  export SLUICE_TOKEN=$(cat "$1/initial-admin-token")
}

make_repo() { # $1 dir, $2 marks dir
  git init -q -b main "$1"
  git -C "$1" config user.email bench@example.com
  git -C "$1" config user.name bench
  cat >"$1/sluice.yaml" <<YAML
service: bench
pipeline:
  jobs:
    first:
      steps:
        - run: date +%s%N > $2/\$SLUICE_SHA
YAML
  git -C "$1" add -A && git -C "$1" commit -q -m init
}

wait_file() { for _ in $(seq 2000); do [ -s "$1" ] && return 0; sleep 0.005; done; echo "timed out waiting for $1" >&2; return 1; }

latencies() { # $1 repo, $2 marks; prints one latency in ms per round
  for i in $(seq "$rounds"); do
    t0=$(now)
    git -C "$1" commit -q --allow-empty -m "round $i"
    sha=$(git -C "$1" rev-parse HEAD)
    wait_file "$2/$sha"
    echo $(( ($(cat "$2/$sha") - t0) / 1000 ))
    sleep 0.2
  done
}

summary() { sort -n | awk '{a[NR]=$1; s+=$1} END {printf "%.1f ms | %.1f ms | %.1f ms", a[int((NR+1)/2)]/1000, s/NR/1000, a[NR]/1000}'; }

# 1. hook path
mkdir -p "$work/marks-hook"
start_server "$work/hook" 1h
make_repo "$work/repo-hook" "$work/marks-hook"
"$sluice" repo add "$work/repo-hook" >/dev/null
sleep 1
hook=$(latencies "$work/repo-hook" "$work/marks-hook" | summary)
kill %1; wait %1 2>/dev/null || true

# 2. polling path
mkdir -p "$work/marks-poll"
start_server "$work/poll" 1s
make_repo "$work/repo-poll" "$work/marks-poll"
"$sluice" repo add "$work/repo-poll" >/dev/null
rm "$work/repo-poll/.git/hooks/reference-transaction"
sleep 1
poll=$(latencies "$work/repo-poll" "$work/marks-poll" | summary)

# 3. executor overhead, on the polling server (its repo is quiet now)
steps=$(for _ in $(seq 20); do echo "        - run: \"true\""; done)
printf 'service: bench\npipeline:\n  jobs:\n    trivial:\n      steps:\n%s\n' "$steps" >"$work/repo-poll/sluice.yaml"
sluice_ms=()
for i in 1 2 3 4 5; do
  git -C "$work/repo-poll" commit -q --allow-empty -am "overhead $i"
  sha=$(git -C "$work/repo-poll" rev-parse HEAD)
  "$sluice" notify --repo repo-poll >/dev/null
  for _ in $(seq 600); do
    run=$("$sluice" runs --json --limit 5 | python3 -c "import json,sys; r=[x for x in json.load(sys.stdin) if x['sha']=='$sha' and x['status'] not in ('queued','running')]; print(r[0]['id'] if r else '')")
    [ -n "$run" ] && break; sleep 0.1
  done
  job_ms=$("$sluice" show "$run" --json | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(j['finished_at']-j['started_at'])")
  sluice_ms+=("$job_ms")
done
plain_ms=()
for i in 1 2 3 4 5; do
  t0=$(now); for _ in $(seq 20); do sh -c true; done; plain_ms+=($(( ($(now) - t0) / 1000000 )))
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }
s=$(median "${sluice_ms[@]}"); p=$(median "${plain_ms[@]}")
per_step=$(awk -v s="$s" -v p="$p" 'BEGIN {printf "%.2f", (s - p) / 20}')
ratio=$(awk -v s="$s" -v p="$p" 'BEGIN {printf "%.1f", s / (p > 0 ? p : 1)}')

cat <<MD
Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); $rounds rounds.

| measure | median | mean | max |
| --- | --- | --- | --- |
| commit → first step, hook | $hook |
| commit → first step, polling every 1 s | $poll |

| 20 trivial steps | median of 5 |
| --- | --- |
| sluice (job start → end) | ${s} ms |
| plain shell script | ${p} ms |
| ratio sluice / shell | ${ratio}× |
| sluice's overhead per step | ${per_step} ms |
MD
