#!/usr/bin/env bash
# Issue 11's two performance figures, measured as a user would: the release binary, driven from
# separate processes (wrk for reads, Python for loading, curl for reports), on SQLite.
#
#  1. Decrypting reads of 100-event pages at 64 connections, with access entries (the default)
#     and without (the hidden --benchmark-without-access-entries), in the same run.
#  2. Each compliance report over a ledger of ENTRIES entries (default 1,000,000).
#
# Usage: benches/access_reports.sh [ENTRIES]     (0: reads only; installs wrk from Debian if missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
entries=${1:-1000000}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
cargo build --release --manifest-path "$root/Cargo.toml" -q
bin="$root/target/release/auditledger"
work=$(mktemp -d)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"

start() { # flags...
  "$bin" serve --bind 127.0.0.1:18111 "$@" > serve.out 2> serve.log &
  pid=$!
  for _ in $(seq 1 100); do grep -q listening serve.out 2>/dev/null && return; sleep 0.1; done
  echo "the service did not start" >&2; cat serve.log >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

# Loads N events with subjects, 100 per request, 8 connections, ~500-byte data.
load() { # streams events_per_stream token
  python3 - "$1" "$2" "$3" <<'EOF'
import json, sys, urllib.request, concurrent.futures, time
streams, per, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
pad = "x" * 420
def post(s):
    for first in range(0, per, 100):
        events = [{"type": "RecordViewed", "subject": f"patient-{s}-{(first + i) % 10}@example.com",
                   "data": {"n": first + i, "note": pad, "ward": "B4"}} for i in range(min(100, per - first))]
        req = urllib.request.Request("http://127.0.0.1:18111/v1/streams/s-%d/events" % s,
                                     data=json.dumps({"events": events}).encode(), method="POST")
        req.add_header("content-type", "application/json")
        req.add_header("authorization", "Bearer " + token)
        urllib.request.urlopen(req).read()
t = time.time()
with concurrent.futures.ThreadPoolExecutor(8) as ex:
    list(ex.map(post, range(streams)))
print(f"loaded {streams * per} events in {time.time() - t:.1f} s", file=sys.stderr)
EOF
}

cat > read.lua <<'EOF'
local token = os.getenv("TOKEN")
request = function()
  local path = "/v1/streams/s-" .. math.random(0, 999) .. "/events?limit=100"
  return wrk.format("GET", path, { ["authorization"] = "Bearer " .. token })
end
EOF

echo "# auditledger access-entry and report benchmark ($(nproc) cores, $(date -u +%F))"
token=$("$bin" token create --role writer,reader,auditor,admin --name bench 2>/dev/null)
export TOKEN=$token
start
load 1000 100 "$token"
stop
echo
echo "## Decrypting reads of 100-event pages, 64 connections, 20 s each (wrk, 2 threads)"
for round in $(seq 1 ${ROUNDS:-3}); do
  for mode in with without; do
    if [ "$mode" = with ]; then start; else start --benchmark-without-access-entries; fi
    out=$(wrk -t2 -c64 -d${SECS:-20}s --latency -s read.lua http://127.0.0.1:18111 2>&1)
    stop
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    errors=$(echo "$out" | grep -c "Non-2xx" || true)
    echo "round $round, access entries $mode: $rps pages/s ($(python3 -c "print(round($rps * 100))") events/s), p99 $p99, non-2xx lines: $errors"
  done
done

[ "$entries" -gt 0 ] || exit 0
echo
echo "## Reports over a ledger of $entries entries"
rest=$((entries - 100000))
start
if [ "$rest" -gt 0 ]; then load $((rest / 1000)) 1000 "$token"; fi
size=$(curl -s -H "authorization: Bearer $token" -X POST http://127.0.0.1:18111/v1/checkpoints | python3 -c 'import json,sys; print(json.load(sys.stdin)["tree_size"])')
echo "ledger size: $size entries"
for kind in activity access erasures retention processing integrity; do
  t0=$(date +%s.%N)
  code=$(curl -s -o report.json -w '%{http_code}' -H "authorization: Bearer $token" "http://127.0.0.1:18111/v1/audit/reports/$kind")
  t1=$(date +%s.%N)
  rss=$(awk '/VmHWM/ {print $2 " " $3}' /proc/$pid/status)
  echo "$kind: HTTP $code in $(python3 -c "print(round($t1 - $t0, 1))") s, $(stat -c %s report.json) bytes; server peak RSS so far $rss"
done
stop
