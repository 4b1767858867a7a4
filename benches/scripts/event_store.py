#!/usr/bin/env python3
"""Issue 12's performance figures, measured as a user would: the release binary as its own
process, driven over HTTP by separate client processes, realistic events (~500 bytes of data,
a subject each), access control on (a token), SQLite unless --postgres.

1. Live delivery: N subscribers (separate processes) on GET /v1/subscribe while appenders
   write R events/s in 100-event requests; latency = arrival at the subscriber minus the
   event's recorded_at (stamped before the commit, so this includes the commit itself).
2. Loading a 10,000-event stream with a snapshot 100 events back (GET /v1/streams/{id}/load).
3. Catch-up: one subscriber from seq 0 over the whole ledger.

Usage: cargo build --release && python3 benches/scripts/event_store.py [--rate 10000]
       [--subscribers 10] [--seconds 10] [--postgres URL]
"""
import argparse, http.client, json, multiprocessing as mp, os, shutil, statistics, subprocess
import sys, tempfile, threading, time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "auditledger")
PAD = "x" * 380


def micros(ts):
    # 2026-12-07T10:00:00.123456Z
    t = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return int(t.timestamp() * 1e6)


def request(conn, method, path, token, body=None):
    headers = {"authorization": "Bearer " + token}
    if body is not None:
        headers["content-type"] = "application/json"
        body = json.dumps(body)
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    if r.status >= 300:
        raise RuntimeError(f"{method} {path}: {r.status} {data[:300]!r}")
    return json.loads(data) if data else None


def events(n, stream_no, first):
    return [{"type": "PaymentCaptured", "subject": f"customer-{stream_no}-{(first + i) % 20}@example.com",
             "data": {"amount_cents": 1000 + i, "currency": "EUR", "card_last4": "4242", "note": PAD},
             "metadata": {"source": "bench"}} for i in range(n)]


def subscriber(port, token, from_seq, until, q, epoch_offset):
    """Reads SSE; reports (count, latencies in ms) for events recorded after `from_seq`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", f"/v1/subscribe?from_seq={from_seq}&stream_prefix=live-",
                 headers={"authorization": "Bearer " + token})
    r = conn.getresponse()
    lat, n = [], 0
    while time.time() < until:
        line = r.fp.readline()
        if not line:
            break
        if line.startswith(b"data:"):
            now = time.time() * 1e6
            k = line.find(b'"recorded_at":"')
            if k >= 0:
                ts = line[k + 15:k + 42].decode()
                lat.append((now - micros(ts) - epoch_offset) / 1000.0)
            n += 1
    q.put((n, lat))


def appender(port, token, stream_no, rate, until, q):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    per_request = 100
    interval = per_request / rate
    sent, next_t, first = 0, time.time(), 0
    while time.time() < until:
        request(conn, "POST", f"/v1/streams/live-{stream_no}/events", token,
                {"events": events(per_request, stream_no, first)})
        first += per_request
        sent += per_request
        next_t += interval
        delay = next_t - time.time()
        if delay > 0:
            time.sleep(delay)
    q.put(sent)


def start(args, work, token_roles):
    env = dict(os.environ)
    if args.postgres:
        env["DATABASE_URL"] = args.postgres
    token = subprocess.run([BIN, "token", "create", "--role", token_roles, "--name", "bench"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    extra = os.environ.get("SERVE_FLAGS", "").split()
    proc = subprocess.Popen([BIN, "serve", "--bind", "127.0.0.1:0", *extra], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=open(os.path.join(work, "serve.log"), "w"), text=True)
    for line in proc.stdout:
        if "listening on http://" in line:
            port = int(line.split("http://")[1].split()[0].rsplit(":", 1)[1])
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, port, token
    raise RuntimeError("the service did not start")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=10000)
    ap.add_argument("--subscribers", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--catchup-events", type=int, default=200000)
    ap.add_argument("--postgres")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="al-bench-")
    proc, port, token = start(args, work, "writer,reader")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    print(f"# auditledger event-store benchmark ({os.cpu_count()} cores, "
          f"{'PostgreSQL' if args.postgres else 'SQLite'}, {time.strftime('%Y-%m-%d')})")
    try:
        # 2. Load: a 10,000-event stream with a snapshot at version 9,899.
        for first in range(0, 10000, 1000):
            request(conn, "POST", "/v1/streams/agg-1/events", token, {"events": events(1000, 1, first)})
        request(conn, "PUT", "/v1/streams/agg-1/snapshots", token,
                {"stream_version": 9899, "state": {"balance_cents": 123456, "note": PAD}})
        times = []
        for _ in range(300):
            t = time.perf_counter()
            body = request(conn, "GET", "/v1/streams/agg-1/load", token)
            times.append((time.perf_counter() - t) * 1000)
            assert body["snapshot"]["stream_version"] == 9899 and len(body["events"]) == 100
        print(f"load, 10,000-event stream, snapshot 100 back: p50 {pct(times, .5):.2f} ms, "
              f"p99 {pct(times, .99):.2f} ms, max {max(times):.2f} ms (300 loads, one client)")

        # 1. Live delivery.
        head = request(conn, "GET", "/v1/events?direction=backward&limit=1&raw=true", token)["events"][0]["seq"] + 1
        q = mp.Queue()
        until = time.time() + args.seconds + 3
        subs = [mp.Process(target=subscriber, args=(port, token, head, until, q, 0)) for _ in range(args.subscribers)]
        for p in subs:
            p.start()
        time.sleep(1.5)
        writers = 2
        aq = mp.Queue()
        apps = [mp.Process(target=appender, args=(port, token, w, args.rate / writers, time.time() + args.seconds, aq))
                for w in range(writers)]
        for p in apps:
            p.start()
        sent = sum(aq.get() for _ in apps)
        results = [q.get() for _ in subs]
        for p in apps + subs:
            p.join()
        lat = [x for _, l in results for x in l]
        got = [n for n, _ in results]
        print(f"live: {sent} events appended in {args.seconds:.0f} s ({sent / args.seconds:,.0f}/s), "
              f"{args.subscribers} subscribers received {min(got)}-{max(got)} each; delivery latency "
              f"from recorded_at: p50 {pct(lat, .5):.1f} ms, p99 {pct(lat, .99):.1f} ms, "
              f"max {max(lat) if lat else float('nan'):.1f} ms")

        # 3. Catch-up from seq 0 (a new connection: the old one sat idle past the server's
        # keep-alive deadline).
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        have = head + sent
        while have < args.catchup_events:
            for s in range(10):
                request(conn, "POST", f"/v1/streams/live-c{s}-{have}/events", token,
                        {"events": events(1000, s, have)})
            have += 10000
        total = request(conn, "GET", "/v1/events?direction=backward&limit=1&raw=true", token)["events"][0]["seq"] + 1
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/v1/subscribe?from_seq=0", headers={"authorization": "Bearer " + token})
        r = c.getresponse()
        n, t0 = 0, time.perf_counter()
        last = 0
        while True:
            line = r.fp.readline()
            if line.startswith(b"id:"):
                n += 1
                last = int(line[3:])
                if last >= total - 1000:
                    break
        dt = time.perf_counter() - t0
        print(f"catch-up: {n} events (seq 0 to {last}) in {dt:.1f} s = {n / dt:,.0f} events/s, one subscriber")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
