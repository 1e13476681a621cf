#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30), from the seeds in
# fuzz/seeds/TARGET and the corpus it grew before, on the stable toolchain
# (no sanitizer: libFuzzer's coverage and Rust's own checks). Fails on the
# first crash, which libFuzzer leaves in fuzz/artifacts/TARGET/.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(sluice_yaml rules_yaml webhook proxy_request)
build_log=$(mktemp)
cargo fuzz build -s none -O >"$build_log" 2>&1 || { cat "$build_log" >&2; exit 1; }
rm -f "$build_log"
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "fuzz $target for ${seconds}s"
  cargo fuzz run -s none -O "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -print_final_stats=1 2>&1 \
    | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done|==[0-9]+== ERROR|thread .* panicked|SUMMARY)' || true
  if ls "artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "fuzz $target: a crash, kept in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
