"""The peer of benches/throughput.sh: the Python `eventsourcing` library saving the same ~1 KB
events as the service is sent, in one process, for a fixed time.

An Aggregate whose every event carries the data of benches/scripts/event_1k.json (plus an "n"
member, as the service's events have), with the library's AES cipher on (AES-256-GCM,
pycryptodome), persisted in SQLite (a fresh file, the library's own settings: WAL and SQLite's
default synchronous) or PostgreSQL (a fresh database, created and dropped here). A
single-event save is a new aggregate (its created event) saved alone; a 100-event save is a new
aggregate with 99 more events, saved at once. No HTTP, no signatures, no hash chain.

Prints `peer_events_per_s BACKEND EVENTS_PER_SAVE N` (and `#` comment lines).

Usage: eventsourcing_peer.py --backend sqlite|postgres --events-per-save 1|100 --seconds S
       [--dir DIR] [--postgres postgres://user@host:port] [--event-file PATH]
"""

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from eventsourcing.application import Application
from eventsourcing.cipher import AESCipher
from eventsourcing.domain import Aggregate, event


class Payment(Aggregate):
    @event("Captured")
    def __init__(self, data: dict):
        self.last = data

    @event("Adjusted")
    def adjust(self, data: dict) -> None:
        self.last = data


def run(app: Application, template: dict, per_save: int, seconds: float) -> tuple[int, float]:
    """Saves until `seconds` have passed; returns (events saved, elapsed seconds)."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        aggregate = Payment(data={"n": n, **template})
        n += 1
        for _ in range(per_save - 1):
            aggregate.adjust(data={"n": n, **template})
            n += 1
        app.save(aggregate)
    return n, time.perf_counter() - start


def main() -> int:
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    p.add_argument("--events-per-save", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--dir", default=None, help="where the SQLite file goes (default: a temp dir)")
    p.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432")
    p.add_argument("--event-file", default=str(here / "event_1k.json"))
    args = p.parse_args()

    template = json.loads(Path(args.event_file).read_text())
    sample = json.dumps({"n": 12345678, **template}, separators=(",", ":"))
    env = {
        "CIPHER_TOPIC": "eventsourcing.cipher:AESCipher",
        "CIPHER_KEY": AESCipher.create_key(num_bytes=32),
    }
    cleanup = []
    try:
        if args.backend == "sqlite":
            tmp = tempfile.TemporaryDirectory(dir=args.dir)
            cleanup.append(tmp.cleanup)
            db = os.path.join(tmp.name, "peer.sqlite")
            env.update({"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": db})
        else:
            import psycopg

            url = urlparse(args.postgres)
            name = "al_peer_" + uuid.uuid4().hex[:12]
            admin = f"{args.postgres.rstrip('/')}/postgres"
            with psycopg.connect(admin, autocommit=True) as c:
                c.execute(f"CREATE DATABASE {name}")

            def drop() -> None:
                with psycopg.connect(admin, autocommit=True) as c:
                    c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

            cleanup.append(drop)
            env.update(
                {
                    "PERSISTENCE_MODULE": "eventsourcing.postgres",
                    "POSTGRES_DBNAME": name,
                    "POSTGRES_HOST": url.hostname or "127.0.0.1",
                    "POSTGRES_PORT": str(url.port or 5432),
                    "POSTGRES_USER": url.username or "postgres",
                    "POSTGRES_PASSWORD": url.password or "",
                }
            )
        app = Application(env=env)
        if args.backend == "sqlite":
            c = sqlite3.connect(env["SQLITE_DBNAME"])
            mode = c.execute("PRAGMA journal_mode").fetchone()[0]
            sync = c.execute("PRAGMA synchronous").fetchone()[0]
            c.close()
            print(f"# peer sqlite: journal_mode={mode}, synchronous={sync} (2 = FULL)")
        else:
            with psycopg.connect(f"{args.postgres.rstrip('/')}/{name}") as c:
                sc = c.execute("SHOW synchronous_commit").fetchone()[0]
            print(f"# peer postgres: synchronous_commit={sc}")
        print(
            f"# peer: eventsourcing, AES cipher, {len(sample)}-byte event data, "
            f"{args.events_per_save} event(s) per save, {args.seconds:g} s"
        )
        events, elapsed = run(app, template, args.events_per_save, args.seconds)
        app.close()
        print(f"peer_events_per_s {args.backend} {args.events_per_save} {events / elapsed:.0f}")
        return 0
    finally:
        for f in cleanup:
            f()


if __name__ == "__main__":
    sys.exit(main())
