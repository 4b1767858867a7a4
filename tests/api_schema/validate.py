"""Validates /openapi.json as OpenAPI 3.1, then calls every operation with valid input on a
ledger seeded with events, a subject, an erasure and checkpoints, and checks each response
against the schema the document declares for its status and content type."""

import json
import sys
import urllib.error
import urllib.request

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

base = sys.argv[1]
token = sys.argv[2]


def call(method, path, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    for k, v in headers.items():
        if v is not None:
            req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            ctype = r.headers.get("Content-Type", "")
            # A subscription never ends: its first message is enough.
            if ctype.startswith("text/event-stream"):
                return r.status, ctype, r.readline()
            return r.status, ctype, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


status, _, raw = call("GET", "/openapi.json")
assert status == 200, status
doc = json.loads(raw)
validate(doc)
print("openapi.json: a valid OpenAPI 3.1 document")

# Seed: events with and without a subject, an erasure, a checkpoint, an idempotent append.
status, _, raw = call("POST", "/v1/streams/acct-1/events", {"events": [
    {"type": "Opened", "subject": "alice@example.com", "data": {"name": "Alice", "n": 1}},
    {"type": "Noted", "data": {"amount": 12.5}, "metadata": {"source": "crm"}},
]}, {"Idempotency-Key": "seed-1"})
assert status == 201, raw
status, _, raw = call("POST", "/v1/subjects/erase",
                      {"subject": "alice@example.com", "reason": "GDPR Art. 17", "request_ref": "DSR-1"})
assert status == 200, raw
erasure_seq = json.loads(raw)["erasure_seq"]
status, _, raw = call("POST", "/v1/streams/acct-2/events", {"events": [
    {"type": "Opened", "subject": "bob@example.com", "data": {"name": "Bob"}}]})
assert status == 201, raw

# A writer-only token, to be refused (403) and then revoked.
status, _, raw = call("POST", "/v1/tokens", {"roles": ["writer"], "name": "schema-check"})
assert status == 201, raw
writer = json.loads(raw)
writer_auth = {"Authorization": f"Bearer {writer['token']}"}

requests = [
    ("GET", "/v1/keys", "/v1/keys", None, {"Authorization": None}),
    ("GET", "/v1/keys", "/v1/keys", None, writer_auth),
    ("GET", "/v1/tokens", "/v1/tokens", None, None),
    ("POST", "/v1/tokens", "/v1/tokens", {"roles": ["auditor"], "name": "a", "expires": "1d"}, None),
    ("POST", "/v1/tokens", "/v1/tokens", {"roles": ["root"]}, None),
    ("POST", "/v1/tokens/{token_id}/revoke", f"/v1/tokens/{writer['id']}/revoke", None, None),
    ("POST", "/v1/tokens/{token_id}/revoke", f"/v1/tokens/{writer['id']}/revoke", None, None),
    ("POST", "/v1/subjects/hold", "/v1/subjects/hold",
     {"subject": "bob@example.com", "reference": "CASE-1", "reason": "GDPR Art. 17(3)(e)"}, None),
    ("POST", "/v1/subjects/hold", "/v1/subjects/hold",
     {"subject": "bob@example.com", "reference": "CASE-1", "reason": "GDPR Art. 17(3)(e)"}, None),
    ("POST", "/v1/subjects/erase", "/v1/subjects/erase",
     {"subject": "bob@example.com", "reason": "GDPR Art. 17", "request_ref": "DSR-2"}, None),
    ("POST", "/v1/subjects/release", "/v1/subjects/release",
     {"subject": "bob@example.com", "reason": "case closed"}, None),
    ("POST", "/v1/subjects/release", "/v1/subjects/release",
     {"subject": "bob@example.com", "reason": "case closed"}, None),
    ("PUT", "/v1/policies/{event_type}", "/v1/policies/Opened",
     {"retention_days": 2190, "purpose": "account management", "legal_basis": "GDPR Art. 6(1)(b)"}, None),
    ("GET", "/v1/policies", "/v1/policies", None, None),
    ("POST", "/v1/keys/rotate", "/v1/keys/rotate", None, None),
    ("GET", "/v1/audit/reports/{kind}", "/v1/audit/reports/integrity", None, None),
    ("GET", "/v1/audit/reports/{kind}", "/v1/audit/reports/erasures?format=csv", None, None),
    ("GET", "/v1/audit/reports/{kind}", "/v1/audit/reports/access?format=html", None, None),
    ("GET", "/v1/audit/reports/{kind}", "/v1/audit/reports/activity?from=2020-01-01&to=2100-01-01", None, None),
    ("GET", "/v1/audit/reports/{kind}", "/v1/audit/reports/retention", None, None),
    ("GET", "/v1/audit/reports/{kind}", "/v1/audit/reports/processing", None, None),
    ("GET", "/v1/audit/reports/{kind}", "/v1/audit/reports/nonsense", None, None),
    ("POST", "/v1/streams/{stream_id}/events", "/v1/streams/acct-3/events",
     {"expected_version": "no_stream", "events": [{"type": "Paid", "data": {"cents": 100}}]}, {"Idempotency-Key": "k-1"}),
    ("POST", "/v1/streams/{stream_id}/events", "/v1/streams/acct-3/events",
     {"expected_version": "no_stream", "events": [{"type": "Paid", "data": {"cents": 100}}]}, {"Idempotency-Key": "k-1"}),
    ("POST", "/v1/streams/{stream_id}/events", "/v1/streams/acct-3/events",
     {"expected_version": "no_stream", "events": [{"type": "Paid", "data": {}}]}, None),
    ("POST", "/v1/streams/{stream_id}/events", "/v1/streams/acct-3/events", [1], None),
    ("GET", "/v1/streams/{stream_id}/events", "/v1/streams/acct-1/events?limit=10", None, None),
    ("GET", "/v1/streams/{stream_id}/events", "/v1/streams/acct-1/events?as_of=1&type=Opened&direction=backward&with_corrections=true", None, None),
    ("GET", "/v1/streams/{stream_id}/events", "/v1/streams/acct-1/events?as_of=yesterday", None, None),
    ("GET", "/v1/events", "/v1/events?from_time=2020-01-01T00:00:00Z&to_time=2100-01-01T00:00:00Z&direction=backward", None, None),
    ("POST", "/v1/streams/{stream_id}/events", "/v1/streams/acct-1/events",
     {"events": [{"type": "Corrected", "data": {}, "corrects": 0}]}, None),
    ("POST", "/v1/streams/{stream_id}/events", "/v1/streams/acct-1/events",
     {"events": [{"type": "Corrected", "data": {}, "reverses": 999999}]}, None),
    ("PUT", "/v1/streams/{stream_id}/snapshots", "/v1/streams/acct-1/snapshots",
     {"stream_version": 0, "state": {"balance": 1}}, None),
    ("PUT", "/v1/streams/{stream_id}/snapshots", "/v1/streams/acct-1/snapshots",
     {"stream_version": 999999, "state": {}}, None),
    ("GET", "/v1/streams/{stream_id}/load", "/v1/streams/acct-1/load?limit=5", None, None),
    ("GET", "/v1/streams", "/v1/streams?prefix=acct-&limit=5", None, None),
    ("GET", "/v1/streams", "/v1/streams?limit=0", None, None),
    ("GET", "/v1/stats/events", "/v1/stats/events?from=2020-01-01&to=2100-01-01", None, None),
    ("GET", "/v1/stats/events", "/v1/stats/events?from=2020", None, None),
    ("PUT", "/v1/subscriptions/{name}", "/v1/subscriptions/billing", {"stream_prefix": "acct-"}, None),
    ("PUT", "/v1/subscriptions/{name}", "/v1/subscriptions/billing", {"stream_prefix": "acct-"}, None),
    ("PUT", "/v1/subscriptions/{name}", "/v1/subscriptions/billing", {"stream_prefix": "other-"}, None),
    ("GET", "/v1/subscriptions/{name}", "/v1/subscriptions/billing", None, None),
    ("GET", "/v1/subscriptions/{name}", "/v1/subscriptions/nothing", None, None),
    ("POST", "/v1/subscriptions/{name}/poll", "/v1/subscriptions/billing/poll?max=2", None, None),
    ("POST", "/v1/subscriptions/{name}/poll", "/v1/subscriptions/billing/poll?max=0", None, None),
    ("POST", "/v1/subscriptions/{name}/ack", "/v1/subscriptions/billing/ack", {"lease_id": "nope"}, None),
    ("PUT", "/v1/schemas/{event_type}", "/v1/schemas/Opened",
     {"versions": [{"version": 1}, {"version": 2, "upcast": [{"add": {"field": "currency", "value": "EUR"}}]}]}, None),
    ("PUT", "/v1/schemas/{event_type}", "/v1/schemas/Opened", {"versions": [{"version": 2}]}, None),
    ("GET", "/v1/schemas/{event_type}", "/v1/schemas/Opened", None, None),
    ("GET", "/v1/schemas/{event_type}", "/v1/schemas/Nothing", None, None),
    ("GET", "/v1/events", "/v1/events?from_seq=0&limit=2", None, None),
    ("GET", "/v1/subscribe", "/v1/subscribe?from_seq=0&stream_prefix=acct-", None, None),
    ("GET", "/v1/subscribe", "/v1/subscribe?from_seq=-1", None, None),
    ("POST", "/v1/subjects/export", "/v1/subjects/export", {"subject": "bob@example.com"}, None),
    ("POST", "/v1/subjects/export", "/v1/subjects/export", {"subject": "nobody@example.com"}, None),
    ("POST", "/v1/subjects/erase", "/v1/subjects/erase",
     {"subject": "alice@example.com", "reason": "GDPR Art. 17", "request_ref": "DSR-1"}, None),
    ("GET", "/v1/subjects/erasures", "/v1/subjects/erasures?request_ref=DSR-1", None, None),
    ("GET", "/v1/subjects/erasures/{erasure_seq}", f"/v1/subjects/erasures/{erasure_seq}", None, None),
    ("POST", "/v1/checkpoints", "/v1/checkpoints", None, None),
    ("GET", "/v1/checkpoints/latest", "/v1/checkpoints/latest", None, None),
    ("GET", "/v1/checkpoints", "/v1/checkpoints?limit=5", None, None),
    ("GET", "/v1/proofs/inclusion", "/v1/proofs/inclusion?seq=0", None, None),
    ("GET", "/v1/proofs/consistency", "/v1/proofs/consistency?from_size=1&to_size=3", None, None),
    ("GET", "/v1/audit/verify", "/v1/audit/verify", None, None),
    ("GET", "/v1/audit/verify", "/v1/audit/verify?async=true", None, None),
    ("GET", "/v1/export", "/v1/export", None, None),
    ("GET", "/v1/keys", "/v1/keys", None, None),
    ("GET", "/healthz", "/healthz", None, None),
    ("GET", "/readyz", "/readyz", None, None),
    ("GET", "/metrics", "/metrics", None, None),
]

seen = set()
for method, template, path, body, headers in requests:
    status, ctype, raw = call(method, path, body, headers)
    op = doc["paths"][template][method.lower()]
    declared = op["responses"].get(str(status))
    assert declared, f"{method} {path}: status {status} is not declared"
    media = ctype.split(";")[0].strip()
    content = declared.get("content", {})
    assert media in content, f"{method} {path}: {status} {media} is not declared ({list(content)})"
    schema = content[media].get("schema")
    if media.endswith("json") and schema is not None:
        pointer = "/".join(["#/paths", template.replace("/", "~1"), method.lower(), "responses",
                            str(status), "content", media.replace("/", "~1"), "schema"])
        validator = Draft202012Validator({**doc, "$ref": pointer})
        errors = sorted(validator.iter_errors(json.loads(raw)), key=str)
        assert not errors, f"{method} {path}: {status} does not match its schema: {errors[0].message}"
    seen.add((method, template))
    print(f"{method} {path}: {status} {media} matches its declaration")
    if template == "/v1/audit/reports/{kind}" and path.endswith("/retention"):
        sha = json.loads(raw)["report_sha256"]
        requests.append(("GET", "/v1/audit/reports/signed/{sha256}", f"/v1/audit/reports/signed/{sha}", None, None))
    if template == "/v1/audit/verify" and status == 202:
        job = json.loads(raw)["job_id"]
        requests.append(("GET", "/v1/audit/verify/jobs/{job_id}", f"/v1/audit/verify/jobs/{job}", None, None))

every = {(m.upper(), p) for p, item in doc["paths"].items() for m in item if m in ("get", "post", "put", "delete")}
missing = every - seen
assert not missing, f"operations not exercised: {sorted(missing)}"
print(f"{len(seen)} operations: every real response matches its declared schema")
