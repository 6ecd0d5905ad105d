#!/usr/bin/env python3
"""Instructions per proxied request of a gateway build, counted by callgrind (not by a clock).

    python3 bench/callgrind.py BINARY [BINARY ...]    # JWT and API-key routes, one worker
    MINT=1 python3 bench/callgrind.py BINARY          # with tokens minted for the upstream
    GATEWAY_YAML=old/gateway.yaml ...                 # a config every build reads
    STORE=embedded python3 bench/callgrind.py BINARY  # another store (default memory)

Runs each build under `valgrind --tool=callgrind` with one worker and the memory store (or
`STORE`), sets up a
user and a key with collection off, then counts the whole process (every thread) while
`wrk -t1 -c8` sends small JSON POSTs for a few seconds, and prints instructions per request: the
count moves with the code, not with the machine's load, so it settles changes that an
interleaved throughput run cannot tell from noise. Only loopback addresses are used.
"""

import glob
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

SECONDS = int(os.environ.get("SECONDS_PER_ROUTE", "5"))


def count(binary, tmp, up, conf, route):
    port = load.free_port()
    out = os.path.join(tmp, f"cg-{route}-{os.path.basename(binary)}-{port}.out")
    env = dict(os.environ, ARES_LISTEN=f"127.0.0.1:{port}", ARES_METRICS_LISTEN="off",
               ARES_UPSTREAM=f"http://127.0.0.1:{up}", ARES_ADMIN_SECRET=load.ADMIN,
               ARES_JWT_SECRET=load.JWT_SECRET, ARES_STORE=os.environ.get("STORE", "memory"),
               ARES_LOG="warn", ARES_WORKERS="1", ARES_DATA_DIR=os.path.join(tmp, f"data-{port}"))
    if os.environ.get("MINT") == "1":
        env["ARES_UPSTREAM_JWT_SECRET"] = "bench-upstream-secret-0123456789abcdef"
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                          f"--callgrind-out-file={out}", binary, "serve", "--config", conf],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load.procs.append(p)
    base = f"http://127.0.0.1:{port}"
    load.wait_http(f"{base}/healthz", timeout=60)
    key, token = load.credentials(base)
    cred = token if route == "jwt" else key
    path = "/api/chat" if route == "jwt" else "/v1/chat"
    script = load.lua(tmp, f"cg-{route}", {"Authorization": f"Bearer {cred}"})
    # Warm up (caches, connections), then count.
    subprocess.run(["wrk", "-t1", "-c8", "-d2s", "-s", script, base + path], capture_output=True)
    subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], capture_output=True, check=True)
    res = subprocess.run(["wrk", "-t1", "-c8", f"-d{SECONDS}s", "-s", script, base + path],
                         capture_output=True, text=True).stdout
    subprocess.run(["callgrind_control", "-i", "off", str(p.pid)], capture_output=True, check=True)
    requests = int(next(l for l in res.splitlines() if "requests in" in l).split()[0])
    p.terminate()
    p.wait(timeout=60)
    # The header's summary stays 0 when instrumentation starts late; callgrind_annotate sums
    # the costs themselves.
    total = 0
    for f in glob.glob(out + "*"):
        text = subprocess.run(["callgrind_annotate", f], capture_output=True, text=True).stdout
        line = next((l for l in text.splitlines() if "PROGRAM TOTALS" in l), "0")
        total += int(line.split()[0].replace(",", ""))
    return total / max(requests, 1), requests


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    tmp = tempfile.mkdtemp(prefix="ares-cg-")
    up = load.nginx_upstream(tmp)
    conf = load.bench_config(tmp, os.environ.get("GATEWAY_YAML"))
    print("| build | route | requests counted | instructions per request |")
    print("|---|---|---|---|")
    for binary in sys.argv[1:]:
        for route in ("jwt", "api_key"):
            per, n = count(binary, tmp, up, conf, route)
            print(f"| {binary} | {route} | {n} | {per:,.0f} |", flush=True)
            time.sleep(0.2)


if __name__ == "__main__":
    try:
        main()
    finally:
        load.stop_all(10)
