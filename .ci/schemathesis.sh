#!/usr/bin/env bash
# Fuzzes the API of a live `sluice serve` (the debug build the tests made)
# with schemathesis against its own OpenAPI description: no answer may be
# a 5xx, and every status, content type and body must be as described.
# POST /repos is left out: it would clone whatever URLs it is given; so are
# POST /channels and its test: they would send to whatever URLs they are given.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.local/bin:$PATH"
if ! command -v schemathesis >/dev/null; then
  pip install -q schemathesis 2>/dev/null \
    || python3 -m pip install -q --break-system-packages schemathesis
fi
sluice=${SLUICE_BIN:-target/debug/sluice}
dir=$(mktemp -d)
chmod 755 "$dir"
"$sluice" serve --data-dir "$dir/data" --listen 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
server=$!
# Waited for: its clean stop stops its local agent, whose files are in $dir.
trap 'kill $server 2>/dev/null && wait $server; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  grep -q 'listening on ' "$dir/out" 2>/dev/null && break
  sleep 0.1
done
url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$dir/out" | head -n 1)
[ -n "$url" ] || { cat "$dir/err" >&2; echo "sluice serve did not start" >&2; exit 1; }
token=$(cat "$dir/data/initial-admin-token")
schemathesis run "$url/api/v1/openapi.json" --url "$url/api/v1" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
  --max-examples 15 --seed 7300 --exclude-operation-id repos_add --exclude-operation-id notifications_add --exclude-operation-id notifications_test \
  --no-color 2>&1 | grep -v '^  - \|💡\|^$'

# The agents' endpoints again with an agent token, the only kind they take.
agent=$(python3 - "$url" "$token" <<'PY'
import json, sys, urllib.request
url, token = sys.argv[1], sys.argv[2]
request = urllib.request.Request(
    f"{url}/api/v1/tokens",
    data=json.dumps({"name": "fuzzing-agent", "role": "agent"}).encode(),
    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
)
print(json.load(urllib.request.urlopen(request))["token"])
PY
)
schemathesis run "$url/api/v1/openapi.json" --url "$url/api/v1" \
  -H "Authorization: Bearer $agent" --include-tag agents \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
  --max-examples 15 --seed 7300 \
  --no-color 2>&1 | grep -v '^  - \|💡\|^$'
