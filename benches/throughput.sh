#!/usr/bin/env bash
# Issue 13's append-throughput benchmark, in one run: the machine's limits (`cargo bench --bench
# limits`), then the release binary driven from outside by wrk, on each backend, for 1-event and
# 100-event requests at 1, 8, 64 and 256 connections, with ~1 KB events (and 64-byte ones for
# continuity); every figure beside the limit measured with it; then the Python `eventsourcing`
# library saving the same events, and the ratio. docs/PERFORMANCE.md, "Append throughput against
# the machine's limits (issue 13)", says what each figure means.
#
# Usage: benches/throughput.sh
#   SECONDS=N     length of each cell, seconds (default 10)
#   QUICK=1       reduced matrix for development: 1 KB events only, 1 and 64 connections
#   BACKENDS=sqlite,postgres   which backends (default both)
#   BENCH_POSTGRES=postgres://postgres@127.0.0.1:5432   the server; a database is created and
#                 dropped for every cell
#   SERVE_FLAGS="--pipeline=false"   extra flags for every service instance
#   CARGO_TARGET_DIR   where the build, the venv and the cells' data dirs go (default ./target)
#
# Installs, if missing: wrk (Debian's package) and eventsourcing 9.5.6 with pycryptodome and
# psycopg (PyPI, in a venv under the target directory). Fails, never skips, when something is
# missing or any request is answered other than 2xx.

# Read first: bash counts SECONDS up from the value it was given, so take it before any time
# passes (0 here means it was not set).
cell_seconds=$SECONDS
set -euo pipefail
case "$cell_seconds" in '' | *[!0-9]* | 0) cell_seconds=10 ;; esac

die() { echo "throughput.sh: $*" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
mkdir -p "$CARGO_TARGET_DIR"
target=$(cd "$CARGO_TARGET_DIR" && pwd)
bin="$target/release/auditledger"
lua="$root/benches/scripts/append.lua"
event_file="$root/benches/scripts/event_1k.json"
peer="$root/benches/scripts/eventsourcing_peer.py"
pg=${BENCH_POSTGRES:-postgres://postgres@127.0.0.1:5432}
pg=${pg%/}
quick=${QUICK:-0}
IFS=, read -r -a backends <<< "${BACKENDS:-sqlite,postgres}"
for b in "${backends[@]}"; do
  case "$b" in sqlite | postgres) ;; *) die "BACKENDS: unknown backend '$b' (sqlite, postgres)" ;; esac
done
if [ "$quick" = 1 ]; then sizes=(1k); conns_list=(1 64); else sizes=(1k 64); conns_list=(1 8 64 256); fi
peer_conns=64 # the service cell each peer ratio uses (1 KB events, one instance)

# --- Tools --------------------------------------------------------------------------------------
for tool in curl python3 git awk; do command -v "$tool" >/dev/null || die "$tool is needed and not installed"; done
if ! command -v wrk >/dev/null; then
  echo "# installing wrk (Debian)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  command -v wrk >/dev/null || die "wrk could not be installed"
fi
for b in "${backends[@]}"; do
  if [ "$b" = postgres ]; then
    command -v psql >/dev/null || die "psql is needed for the postgres backend"
    psql "$pg/postgres" -qAtc 'select 1' >/dev/null 2>&1 || die "PostgreSQL is not reachable at $pg (BENCH_POSTGRES)"
  fi
done
venv="$target/eventsourcing-venv"
if ! "$venv/bin/python" -c 'import eventsourcing, Crypto, psycopg' 2>/dev/null ||
  [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("eventsourcing"))')" != 9.5.6 ]; then
  echo "# installing eventsourcing 9.5.6 into $venv (PyPI)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "eventsourcing[crypto,postgres]==9.5.6" "psycopg[binary]" ||
    die "eventsourcing could not be installed from PyPI"
fi

commit=$(git -C "$root" rev-parse --short HEAD)
git -C "$root" diff --quiet HEAD -- src Cargo.toml Cargo.lock migrations || commit="$commit (with uncommitted changes)"
echo "# auditledger append throughput (issue 13)"
echo "commit $commit"
echo "date $(date -u '+%F %T') UTC; $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cells: ${cell_seconds} s each; backends: ${backends[*]}; $([ "$quick" = 1 ] && echo 'QUICK matrix' || echo 'full matrix')"

cargo build --release --manifest-path "$root/Cargo.toml" -q || die "the release build failed"
[ -x "$bin" ] || die "no binary at $bin"

work=$(mktemp -d "$target/throughput.XXXXXX")
pids=()
dbs=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for d in "${dbs[@]}"; do psql "$pg/postgres" -qAtc "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null 2>&1 || true; done
  if [ "$rc" -eq 0 ]; then rm -rf "$work"; else echo "throughput.sh: failed; logs kept in $work" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- The machine's limits, in the filesystem the cells' data dirs are in ------------------------
echo
echo "## Limits (cargo bench --bench limits)"
LIMITS_DIR="$work" cargo bench --manifest-path "$root/Cargo.toml" -q --bench limits > "$work/limits.txt" ||
  die "cargo bench --bench limits failed"
cat "$work/limits.txt"
limit() {
  local v
  v=$(awk -v n="$1" '$1 == "limit" && $2 == n {print $3}' "$work/limits.txt")
  [ -n "$v" ] || die "the limits benchmark printed no $1"
  echo "$v"
}
crypto_limit=$(limit crypto_all_cores_events_per_s)
fsync_limit=$(limit fsync_per_s)

# --- Services -----------------------------------------------------------------------------------
addr=""
start_service() { # dir keys_dir [database_url]; sets $addr
  local dir=$1 keys=$2 url=${3:-} out
  mkdir -p "$dir"
  out="$dir/serve.out"
  local db_args=()
  [ -n "$url" ] && db_args=(--database-url "$url")
  # shellcheck disable=SC2086 # SERVE_FLAGS: extra flags, split on spaces
  "$bin" serve --bind 127.0.0.1:0 --data-dir "$dir/data" --keys-dir "$keys" "${db_args[@]}" ${SERVE_FLAGS:-} \
    > "$out" 2> "$dir/serve.log" &
  local pid=$!
  pids+=("$pid")
  addr=""
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { cat "$dir/serve.log" >&2; die "the service exited at start (log above)"; }
    addr=$(sed -n 's/^auditledger listening on http:\/\/\([^ ]*\).*/\1/p' "$out" | head -1)
    if [ -n "$addr" ] && curl -fsS -o /dev/null "http://$addr/readyz" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  cat "$dir/serve.log" >&2
  die "the service did not become ready within 30 s (log above)"
}
stop_services() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
new_database() { # name: creates it, durable commits on
  psql "$pg/postgres" -v ON_ERROR_STOP=1 -qAtc "CREATE DATABASE $1" >/dev/null || die "could not create database $1"
  dbs+=("$1")
  psql "$pg/postgres" -v ON_ERROR_STOP=1 -qAtc "ALTER DATABASE $1 SET synchronous_commit = on" >/dev/null
  [ "$(psql "$pg/$1" -qAtc 'SHOW synchronous_commit')" = on ] || die "synchronous_commit is not on in $1"
}
drop_databases() {
  for d in "${dbs[@]}"; do psql "$pg/postgres" -qAtc "DROP DATABASE IF EXISTS $d WITH (FORCE)" >/dev/null; done
  dbs=()
}

# One request naming every subject of append.lua's pool (customer-0000 … customer-0999).
python3 -c 'import json; print(json.dumps({"events": [{"type": "SubjectSeen", "subject": f"customer-{i:04d}", "data": {"seen": True}} for i in range(1000)]}))' > "$work/subjects.json"

# --- One cell -----------------------------------------------------------------------------------
result() { awk -v k="$1" '$1 == "result" && $2 == k {print $3}' "$2"; }
cells="$work/cells.txt"
: > "$cells"
ncell=0
run_cell() { # backend instances size events conns
  local backend=$1 instances=$2 size=$3 events=$4 conns=$5
  ncell=$((ncell + 1))
  local dir="$work/cell$ncell" url=""
  mkdir -p "$dir"
  if [ "$backend" = postgres ]; then
    new_database "al_tp_$$_$ncell"
    url="$pg/al_tp_$$_$ncell"
  fi
  local db_args=()
  [ -n "$url" ] && db_args=(--database-url "$url")
  TOKEN=$("$bin" token create --role writer --name throughput --data-dir "$dir/i1/data" \
    --keys-dir "$dir/keys" "${db_args[@]}" 2> "$dir/token.log") || { cat "$dir/token.log" >&2; die "token create failed"; }
  export TOKEN
  local addrs=()
  for i in $(seq 1 "$instances"); do
    start_service "$dir/i$i" "$dir/keys" "$url"
    addrs+=("$addr")
  done
  if [ "$size" = 1k ]; then
    # The subject pool exists before the clock starts (one key per subject is made on first
    # use): the cell measures appends for known subjects, as a ledger in service mostly sees.
    local code
    code=$(curl -sS -o "$dir/warmup.out" -w '%{http_code}' -X POST "http://${addrs[0]}/v1/streams/warmup-c$ncell/events" \
      -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' --data-binary "@$work/subjects.json")
    [ "$code" = 201 ] || die "creating the subject pool failed: HTTP $code $(head -c 300 "$dir/warmup.out")"
  fi
  local per=$((conns / instances)) threads=2 outs=() wpids=()
  [ "$instances" -gt 1 ] && threads=1 # two wrk processes: one thread each, two in all
  [ "$per" -lt "$threads" ] && threads=$per
  for i in $(seq 1 "$instances"); do
    local o="$dir/wrk$i.txt"
    outs+=("$o")
    RUN="c$ncell-i$i" EVENTS=$events SIZE=$size EVENT_FILE=$event_file \
      wrk -t"$threads" -c"$per" -d"${cell_seconds}s" --timeout 30s --latency -s "$lua" \
      "http://${addrs[$((i - 1))]}" > "$o" 2>&1 &
    wpids+=($!)
  done
  for p in "${wpids[@]}"; do wait "$p" || die "wrk failed: $(cat "${outs[@]}")"; done
  stop_services
  [ "$backend" = postgres ] && drop_databases
  local eps=0 p50=0 p99=0 p999=0 bad=0 sock=0 reqs=0
  for o in "${outs[@]}"; do
    local req dur
    req=$(result requests "$o"); dur=$(result duration_s "$o")
    reqs=$((reqs + req))
    [ -n "$req" ] && [ -n "$dur" ] || die "wrk printed no result (cell $ncell): $(cat "$o")"
    eps=$(awk -v a="$eps" -v r="$req" -v d="$dur" -v e="$events" 'BEGIN {printf "%.0f", a + r * e / d}')
    bad=$((bad + $(result non2xx "$o")))
    sock=$((sock + $(result socket_errors "$o")))
    # With two instances, each percentile is the worse of the two wrk processes'.
    p50=$(awk -v a="$p50" -v b="$(result p50_ms "$o")" 'BEGIN {print (b > a ? b : a)}')
    p99=$(awk -v a="$p99" -v b="$(result p99_ms "$o")" 'BEGIN {print (b > a ? b : a)}')
    p999=$(awk -v a="$p999" -v b="$(result p999_ms "$o")" 'BEGIN {print (b > a ? b : a)}')
  done
  local of_crypto of_fsync="-"
  of_crypto=$(awk -v a="$eps" -v b="$crypto_limit" 'BEGIN {printf "%.3f", a / b}')
  [ "$conns" = 1 ] && [ "$events" = 1 ] && of_fsync=$(awk -v a="$eps" -v b="$fsync_limit" 'BEGIN {printf "%.3f", a / b}')
  local line="cell backend=$backend instances=$instances size=$size events_per_request=$events connections=$conns events_per_s=$eps p50_ms=$p50 p99_ms=$p99 p999_ms=$p999 non2xx=$bad socket_errors=$sock of_crypto_limit=$of_crypto of_fsync_rate=$of_fsync requests_per_connection=$((reqs / conns))"
  echo "$line"
  echo "$line" >> "$cells"
  # wrk counts the requests answered within the cell; those in flight at its end are lost, up to
  # one request per connection. Fewer than 10 per connection: the figure is low by over 5 %.
  if [ $((reqs / conns)) -lt 10 ]; then
    echo "warning: cell $ncell completed only $reqs requests on $conns connections; its events/s undercounts (in-flight requests at the end are not counted): lengthen SECONDS"
  fi
  if [ "$bad" -ne 0 ] || [ "$sock" -ne 0 ]; then
    grep -h '^result first_bad' "${outs[@]}" >&2 || true
    die "cell $ncell had $bad non-2xx answers and $sock socket errors: the figures above are not valid"
  fi
}

cell_eps() { # backend instances size events conns
  awk -v b="backend=$1" -v i="instances=$2" -v s="size=$3" -v e="events_per_request=$4" -v c="connections=$5" \
    '$2 == b && $3 == i && $4 == s && $5 == e && $6 == c {sub("events_per_s=", "", $7); print $7}' "$cells"
}

# --- The matrix, then the peer ------------------------------------------------------------------
peers="$work/peers.txt"
: > "$peers"
for backend in "${backends[@]}"; do
  echo
  if [ "$backend" = postgres ]; then
    echo "## PostgreSQL ($(psql "$pg/postgres" -qAtc 'SHOW server_version'), fsync=$(psql "$pg/postgres" -qAtc 'SHOW fsync'), synchronous_commit=on in every cell's database), one instance"
    [ "$(psql "$pg/postgres" -qAtc 'SHOW fsync')" = on ] || die "PostgreSQL runs with fsync=off: the figures would not be durable"
  else
    echo "## SQLite (WAL, synchronous=FULL), one instance"
  fi
  for size in "${sizes[@]}"; do
    for events in 1 100; do
      for conns in "${conns_list[@]}"; do run_cell "$backend" 1 "$size" "$events" "$conns"; done
    done
  done
  if [ "$backend" = postgres ]; then
    echo
    echo "## PostgreSQL, two instances on one database (shared keys), each driven by its own wrk with half the connections; events/s summed, each percentile the worse of the two"
    for events in 1 100; do
      for conns in "${conns_list[@]}"; do
        [ "$conns" -ge 2 ] && run_cell postgres 2 1k "$events" "$conns"
      done
    done
  fi
  echo
  echo "## Peer: Python eventsourcing 9.5.6 on $backend, same ~1 KB events, in process"
  for per in 1 100; do
    "$venv/bin/python" "$peer" --backend "$backend" --events-per-save "$per" --seconds "$cell_seconds" \
      --dir "$work" --postgres "$pg" --event-file "$event_file" | tee -a "$peers" ||
      die "the eventsourcing peer failed ($backend, $per per save)"
  done
  for per in 1 100; do
    p=$(awk -v b="$backend" -v e="$per" '$1 == "peer_events_per_s" && $2 == b && $3 == e {print $4}' "$peers")
    s=$(cell_eps "$backend" 1 1k "$per" "$peer_conns")
    [ -n "$p" ] && [ -n "$s" ] || die "no figure for the $backend ratio at $per event(s) per request"
    echo "ratio backend=$backend events_per_request=$per service_events_per_s=$s (1 KB, $peer_conns connections) peer_events_per_s=$p service_over_peer=$(awk -v a="$s" -v b="$p" 'BEGIN {printf "%.2f", a / b}')"
  done
done

echo
echo "## Summary (commit $commit; crypto limit $crypto_limit events/s on all cores, fsync $fsync_limit/s; load average at end: $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| backend | instances | event | events/request | connections | events/s | p50 ms | p99 ms | p99.9 ms | of crypto limit | of fsync rate | requests/connection |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
sed 's/[a-z_0-9]*=//g' "$cells" | awk '{printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %.0f %% | %s | %s%s |\n", $2, $3, ($4 == "1k" ? "~1 KB" : "64 B"), $5, $6, $7, $8, $9, $10, $13 * 100, ($14 == "-" ? "" : sprintf("%.0f %%", $14 * 100)), $15, ($15 < 10 ? " (too few: undercounts)" : "")}'
