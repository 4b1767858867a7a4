#!/usr/bin/env python3
"""Erasure and KEK-epoch benchmark (issue 9), driven from a separate process against the
release binary, as a user would run it.

    cargo build --release
    python3 benches/scripts/erasure_epochs.py [--subjects 100000] [--postgres URL]

1. An erasure's effect on concurrent appends: 8 client threads append 1-event requests
   (about 300 bytes of JSON, each naming one of 1,000 subjects) for 12 s; from 4 s to 8 s
   another thread erases a subject every 0.25 s. Append latency is reported for the windows
   without and with erasures, and the erasures' own latency.
2. The cost of ending a KEK epoch with N live subjects: N subjects are created (100-event
   requests), then `auditledger rotate-kek` asks the running service to end the epoch while
   4 threads keep appending; the wall time to the old epoch's destruction, the rows re-wrapped
   per second, and append throughput and latency before and during the rotation are reported.
"""
import argparse, http.client, json, os, shutil, signal, subprocess, sys, tempfile, threading, time

BIN = os.path.join(os.path.dirname(__file__), "..", "..", os.environ.get("CARGO_TARGET_DIR", "target"), "release", "auditledger")
PAD = "x" * 200


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


class Client:
    def __init__(self, port):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, path, body):
        self.c.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        r = self.c.getresponse()
        data = r.read()
        return r.status, data


def start(workdir, port, pg, extra):
    args = [BIN, "serve", "--bind", f"127.0.0.1:{port}", "--data-dir", f"{workdir}/data",
            "--keys-dir", f"{workdir}/keys", "--checkpoint-interval-secs", "3600"] + extra
    env = dict(os.environ)
    if pg:
        env["DATABASE_URL"] = pg
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return p
        except OSError:
            time.sleep(0.05)
    sys.exit("server did not start")


def event(subject, i):
    return {"type": "PaymentInitiated", "subject": subject,
            "data": {"amount": i, "currency": "EUR", "iban": f"DE89{i:018d}", "note": PAD},
            "metadata": {"channel": "web", "correlation_id": f"c-{i}"}}


def appenders(port, n_threads, stop, out, subjects):
    def run(t):
        c = Client(port)
        i = 0
        while not stop.is_set():
            s = subjects(t, i)
            t0 = time.monotonic()
            st, body = c.post(f"/v1/streams/acct-{t}-{i % 50}/events", {"events": [event(s, i)]})
            t1 = time.monotonic()
            if st != 201:
                print("append failed", st, body[:200], file=sys.stderr)
            out.append((t0, t1 - t0))
            i += 1
    ths = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for th in ths:
        th.start()
    return ths


def window(samples, a, b):
    xs = [d for (t, d) in samples if a <= t < b]
    return len(xs), pct(xs, 50) * 1000, pct(xs, 99) * 1000, (max(xs) * 1000 if xs else float("nan"))


def phase_erasure(port):
    c = Client(port)
    for r in range(10):
        c.post(f"/v1/streams/seed-{r}/events", {"events": [event(f"person-{r * 100 + k:05d}@example.org", k) for k in range(100)]})
    stop = threading.Event()
    samples = []
    t_start = time.monotonic()
    ths = appenders(port, 8, stop, samples, lambda t, i: f"person-{(t * 7919 + i) % 1000:05d}@example.org")
    erasures = []
    time.sleep(4)
    e = Client(port)
    k = 0
    while time.monotonic() - t_start < 8:
        t0 = time.monotonic()
        st, body = e.post("/v1/subjects/erase", {"subject": f"person-{k:05d}@example.org", "reason": "GDPR Art. 17", "request_ref": f"BENCH-{k}"})
        erasures.append(time.monotonic() - t0)
        k += 1
        time.sleep(0.25)
    time.sleep(4)
    stop.set()
    for th in ths:
        th.join()
    base = t_start
    print("\n## 1. Appends during erasures (8 clients, 1-event requests)")
    print("| window | appends | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for name, a, b in (("0-4 s, no erasures", 0, 4), ("4-8 s, an erasure every 0.25 s", 4, 8), ("8-12 s, no erasures", 8, 12)):
        n, p50, p99, mx = window(samples, base + a, base + b)
        print(f"| {name} | {n} ({n / (b - a):.0f}/s) | {p50:.1f} | {p99:.1f} | {mx:.1f} |")
    print(f"\nerasures: {len(erasures)}, p50 {pct(erasures, 50) * 1000:.1f} ms, max {max(erasures) * 1000:.1f} ms")


def phase_rotation(port, workdir, n, pg):
    c = Client(port)
    t0 = time.monotonic()
    lock = threading.Lock()
    nxt = [0]

    def creator():
        cl = Client(port)
        while True:
            with lock:
                b = nxt[0]
                nxt[0] += 100
            if b >= n:
                return
            cl.post(f"/v1/streams/bulk-{b // 100}/events", {"events": [
                {"type": "AccountOpened", "subject": f"subject-{j:08d}@example.org", "data": {"i": j}} for j in range(b, min(n, b + 100))]})
    ths = [threading.Thread(target=creator) for _ in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    created = time.monotonic() - t0
    print(f"\n## 2. Ending a KEK epoch with {n:,} live subjects")
    print(f"created {n:,} subjects in {created:.1f} s ({n / created:,.0f}/s, 100-event requests, 4 clients)")
    stop = threading.Event()
    samples = []
    ths = appenders(port, 4, stop, samples, lambda t, i: f"live-{t}-{i % 500}@example.org")
    time.sleep(5)
    r0 = time.monotonic()
    env = dict(os.environ)
    if pg:
        env["DATABASE_URL"] = pg
    out = subprocess.run([BIN, "rotate-kek", "--data-dir", f"{workdir}/data", "--keys-dir", f"{workdir}/keys", "--timeout-secs", "3600"],
                         capture_output=True, text=True, env=env)
    r1 = time.monotonic()
    time.sleep(3)
    stop.set()
    for th in ths:
        th.join()
    if out.returncode != 0:
        print(out.stdout, out.stderr)
    rows = 2 * n + 1 + len({1})  # keys + links + system key (+ the appenders' few hundred subjects)
    print(f"rotate-kek (online) to the old epoch destroyed: {r1 - r0:.1f} s, about {rows / (r1 - r0):,.0f} keys+links/s")
    print("| window | appends/s | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for name, a, b in (("5 s before", r0 - 5, r0), ("during the rotation", r0, r1), ("3 s after", r1, r1 + 3)):
        cnt, p50, p99, mx = window(samples, a, b)
        print(f"| {name} | {cnt / max(b - a, 1e-9):.0f} | {p50:.1f} | {p99:.1f} | {mx:.1f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--postgres", help="admin URL: a database is created and dropped")
    ap.add_argument("--skip-erasure", action="store_true")
    a = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="al-bench-")
    pg = None
    if a.postgres:
        db = f"al_bench_{os.getpid()}"
        subprocess.run(["psql", a.postgres, "-qc", f"CREATE DATABASE {db}"], check=True)
        pg = a.postgres.rsplit("/", 1)[0] + "/" + db
    port = 18000 + os.getpid() % 1000
    p = start(workdir, port, pg, os.environ.get("SERVE_FLAGS", "").split())
    try:
        print(f"backend: {'PostgreSQL' if pg else 'SQLite'}; binary: {os.path.realpath(BIN)}")
        if not a.skip_erasure:
            phase_erasure(port)
        phase_rotation(port, workdir, a.subjects, pg)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        if pg:
            subprocess.run(["psql", a.postgres, "-qc", f"DROP DATABASE {db} WITH (FORCE)"])


if __name__ == "__main__":
    main()
