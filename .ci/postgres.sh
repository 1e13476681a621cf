#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server on loopback for the test suite and
# prints the URL that SLUICE_TEST_POSTGRES takes. Installs Debian's package
# when the server binaries are missing. Usage: eval "$(.ci/postgres.sh DIR)"
set -euo pipefail
dir=${1:-/tmp/sluice-test-postgres}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
if [ -f "$dir/postmaster.pid" ]; then
  runuser -u postgres -- "$bin/pg_ctl" -D "$dir" -m immediate stop >&2 || true
fi
rm -rf "$dir"
mkdir -p "$dir"
chown postgres "$dir"
runuser -u postgres -- "$bin/initdb" -D "$dir" -A trust -U postgres >/dev/null
# A port nobody listens on may still be taken by a connection's own end:
# try the next one when the server cannot bind.
port=55432
for _ in $(seq 20); do
  if ! (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w \
      -o "-h 127.0.0.1 -p $port -k $dir -c max_connections=300 -c fsync=off" start >&2; then
    echo "export SLUICE_TEST_POSTGRES=postgres://postgres@127.0.0.1:$port/postgres"
    exit 0
  fi
  port=$((port + 1))
done
echo "could not start PostgreSQL on any port from 55432; see $dir/server.log" >&2
exit 1
