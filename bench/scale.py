#!/usr/bin/env python3
"""The embedded store at scale: 1,000,000 API keys and 1,000,000 users in the file.

    python3 bench/scale.py            # KEYS=1000000 USERS=1000000 SAMPLE=20000 by default

Writes an export file (1,000 tenants, KEYS keys in ARES's `ares_<64 hex>` shape so the raw keys
are known here, USERS users with a fixed Argon2id hash), loads it with `ares-gateway import`
into a fresh data directory, then starts `ares-gateway serve` on it and measures: the import's
time, the file's size, start-up time (spawn to the first 200 from /healthz), RSS after start-up,
the latency of requests with SAMPLE distinct keys never seen before (each one an uncached key:
a store lookup in the file) against the same key repeated (cached), and RSS after them. Prints a
markdown table. Only loopback addresses are used; every process it starts is stopped.
"""

import hashlib
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

KEYS = int(os.environ.get("KEYS", "1000000"))
USERS = int(os.environ.get("USERS", "1000000"))
SAMPLE = int(os.environ.get("SAMPLE", "20000"))
# Reuse the data directory of an earlier run (same KEYS/USERS: the keys come from a fixed seed).
DATA = os.environ.get("DATA")
# store.embedded_cache_mb for the serve run (the shipped default is 64).
CACHE_MB = os.environ.get("CACHE_MB")
TENANTS = 1000
HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2NhbGUtYmVuY2gtc2FsdA$2dQ0cAo4c0ViYnR2cmVwRW5kSGFzaGhhc2g"


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_export(path, rng):
    """The export file, and a sample of raw keys to call with."""
    sample_at = set(rng.sample(range(KEYS), min(SAMPLE, KEYS)))
    sample = []
    with open(path, "w") as f:
        f.write(json.dumps({"type": "export", "format": 1, "store": "bench", "exported_at": 0}) + "\n")
        for t in range(TENANTS):
            f.write(json.dumps({"type": "tenant", "id": f"ten_{t}", "name": f"tenant {t}", "tier": "enterprise",
                                "status": "active", "created_at": 1_700_000_000}) + "\n")
        for i in range(KEYS):
            body = rng.getrandbits(256).to_bytes(32, "big").hex()
            raw = "ares_" + body
            f.write(json.dumps({"type": "api_key", "id": f"key_{i}", "tenant_id": f"ten_{i % TENANTS}",
                                "key_hash": hashlib.sha256(body.encode()).hexdigest(), "key_prefix": raw[:13],
                                "name": "k", "scopes": ["full"], "is_active": True, "created_at": 1_700_000_000,
                                "expires_at": None, "last_used_at": None, "imported": True}) + "\n")
            if i in sample_at:
                sample.append(raw)
        for i in range(USERS):
            f.write(json.dumps({"type": "user", "id": f"usr_{i}", "email": f"user{i}@example.com", "name": "U",
                                "password_hash": HASH, "created_at": 1_700_000_000}) + "\n")
    rng.shuffle(sample)
    return sample


def timed_requests(port, keys):
    """Per-request latency (ms) of POST /v1/chat with each key, on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    for k in keys:
        start = time.perf_counter()
        conn.request("POST", "/v1/chat", body=load.BODY,
                     headers={"Authorization": f"Bearer {k}", "Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        out.append((time.perf_counter() - start) * 1000)
        if r.status != 200:
            raise SystemExit(f"a key from the file was refused: {r.status}")
    conn.close()
    return out


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]


def main():
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "ares-gateway"], cwd=load.ROOT, check=True)
    binary = os.path.join(load.ROOT, "target", "release", "ares-gateway")
    tmp = tempfile.mkdtemp(prefix="ares-scale-", dir=os.environ.get("BENCH_DIR"))
    data = DATA or os.path.join(tmp, "data")
    export = os.path.join(tmp, "all.jsonl") if not DATA else os.devnull
    rng = random.Random(7)
    t = time.monotonic()
    sample = write_export(export, rng)
    print(f"export file written in {time.monotonic() - t:.0f} s", file=sys.stderr)

    up = load.nginx_upstream(tmp)
    conf = load.bench_config(tmp)
    if CACHE_MB:
        with open(conf) as f:
            text = f.read().replace("embedded_cache_mb: 64", f"embedded_cache_mb: {CACHE_MB}")
        with open(conf, "w") as f:
            f.write(text)
    env = dict(os.environ, ARES_STORE="embedded", ARES_DATA_DIR=data, ARES_ADMIN_SECRET=load.ADMIN,
               ARES_JWT_SECRET=load.JWT_SECRET, ARES_LOG="warn", ARES_METRICS_LISTEN="off",
               ARES_UPSTREAM=f"http://127.0.0.1:{up}")
    import_s = float("nan")
    if not DATA:
        t = time.monotonic()
        imp = subprocess.run([binary, "import", export, "--config", conf], env=env, capture_output=True, text=True)
        import_s = time.monotonic() - t
        if imp.returncode != 0:
            raise SystemExit("import failed: " + imp.stdout[-2000:] + imp.stderr[-2000:])
        os.remove(export)
    file_mb = os.path.getsize(os.path.join(data, "gateway.redb")) / 1e6

    port = load.free_port()
    env["ARES_LISTEN"] = f"127.0.0.1:{port}"
    t = time.monotonic()
    gw = load.spawn([binary, "serve", "--config", conf], env=env)
    load.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=120)
    start_ms = (time.monotonic() - t) * 1000
    rss_start = rss_mib(gw.pid)

    cached = timed_requests(port, [sample[0]] * min(SAMPLE, 5000))
    uncached = timed_requests(port, sample[1:])
    rss_after = rss_mib(gw.pid)
    load.stop_all()

    print(f"\nembedded store with {KEYS:,} API keys and {USERS:,} users, embedded_cache_mb "
          f"{CACHE_MB or 64} ({os.cpu_count()} cores, loopback, one keep-alive connection)\n")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| import ({KEYS + USERS + TENANTS:,} records, `ares-gateway import`) | {import_s:.0f} s |")
    print(f"| data file | {file_mb:.0f} MB |")
    print(f"| start-up (spawn to first 200 from /healthz) | {start_ms:.0f} ms |")
    print(f"| RSS after start-up | {rss_start:.1f} MiB |")
    print(f"| request with a cached key, p50 / p99 | {pct(cached, 0.5):.3f} / {pct(cached, 0.99):.3f} ms |")
    print(f"| request with an uncached key ({len(uncached):,} distinct), p50 / p99 | "
          f"{pct(uncached, 0.5):.3f} / {pct(uncached, 0.99):.3f} ms |")
    print(f"| uncached minus cached (the file lookup), p50 | "
          f"{statistics.median(uncached) - statistics.median(cached):.3f} ms |")
    print(f"| RSS after {len(uncached):,} distinct keys | {rss_after:.1f} MiB |")


if __name__ == "__main__":
    try:
        main()
    finally:
        load.stop_all()
