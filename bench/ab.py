#!/usr/bin/env python3
"""Interleaved A/B of two gateway runs on the JWT and API-key routes (memory store), on loopback.

    python3 bench/ab.py A_BINARY B_BINARY            # two builds, same settings
    MINT_B=1 python3 bench/ab.py BINARY BINARY       # one build, B mints tokens for the upstream
    ENV_B=ARES_WORKERS=2 python3 bench/ab.py BIN BIN # one build, B with settings of its own
    ENV_B=OTEL_EXPORTER_OTLP_ENDPOINT={sink} ...     # {sink}: an OTLP receiver that discards
    ROUNDS=6 DURATION=6 WORKERS=1 ...                # the defaults
    GATEWAY_YAML=old/gateway.yaml ...                # a config both builds read (else ./gateway.yaml)
    STORE=redis ...                                  # each side on a redis-server of its own
                                                     # (its CPU counted with the gateway's), with
                                                     # the shipped per-minute limits in force
    STORE=postgres ENV_A=ARES_LEASE_REQUESTS=64 ...  # each side on a PostgreSQL of its own
                                                     # (ARES's tables; the postmaster and its
                                                     # backends counted with the gateway)

For a change to the request path: the build before against the build after. For minting
(issue 18): the same build with and without `ARES_UPSTREAM_JWT_SECRET`. Each round runs A then B
(then B then A on odd rounds, so neither always goes first) on both routes with wrk (-t2 -c64,
small JSON POSTs) against an nginx upstream answering a small JSON body, and prints the medians:
requests/s and the gateway's CPU microseconds per request (its own CPU time from /proc), with
B's ratio to A. Only loopback addresses are used.
"""

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the helpers: spawn, wrk, lua, cpu_ticks, ...)

ROUNDS = int(os.environ.get("ROUNDS", "6"))
load.DURATION = int(os.environ.get("DURATION", "6"))
WORKERS = os.environ.get("WORKERS", "1")
MINT_SECRET = "bench-upstream-secret-0123456789abcdef"


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    binaries = {"A": sys.argv[1], "B": sys.argv[2]}
    mint = {"A": os.environ.get("MINT_A") == "1", "B": os.environ.get("MINT_B") == "1"}
    tmp = tempfile.mkdtemp(prefix="ares-ab-")
    up = load.nginx_upstream(tmp)
    store = os.environ.get("STORE", "memory")
    # On Redis: the shipped config as it is (per-minute GCRA windows in force), limits raised
    # high enough never to refuse. In memory: calendar limits only (`load.bench_config`).
    if store in ("redis", "postgres"):
        conf = os.environ.get("GATEWAY_YAML") or os.path.join(load.ROOT, "gateway.yaml")
    else:
        conf = load.bench_config(tmp, os.environ.get("GATEWAY_YAML"))

    sink = None
    gateways = {}
    for side in ("A", "B"):
        port = load.free_port()
        env = dict(os.environ, ARES_LISTEN=f"127.0.0.1:{port}", ARES_METRICS_LISTEN="off",
                   ARES_UPSTREAM=f"http://127.0.0.1:{up}", ARES_ADMIN_SECRET=load.ADMIN,
                   ARES_JWT_SECRET=load.JWT_SECRET, ARES_STORE=store, ARES_LOG="warn",
                   ARES_WORKERS=WORKERS, ARES_USER_REQUESTS_PER_MINUTE="100000000",
                   ARES_DATA_DIR=os.path.join(tmp, f"data-{side}"))
        pids = []
        if store == "redis":
            redis_port = load.free_port()
            pids.append(load.spawn(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--dir", tmp]).pid)
            time.sleep(0.3)
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}"
        postmaster = None
        if store == "postgres":
            postmaster, env["DATABASE_URL"] = load.postgres_server(tmp)
        # ENV_B="NAME=value,NAME2=value" gives one side settings of its own.
        for pair in filter(None, os.environ.get(f"ENV_{side}", "").split(",")):
            name, _, value = pair.partition("=")
            if "{sink}" in value:
                sink = sink or load.otlp_sink()
                value = value.replace("{sink}", sink)
            env[name] = value
        if mint[side]:
            env["ARES_UPSTREAM_JWT_SECRET"] = MINT_SECRET
        p = load.spawn([binaries[side], "serve", "--config", conf], env=env)
        base = f"http://127.0.0.1:{port}"
        load.wait_http(f"{base}/healthz")
        key, token, tenant = load.credentials(base, with_tenant=True)
        if store in ("redis", "postgres"):
            load.call("PUT", f"{base}/api/admin/tenants/{tenant}/limits", '{"requests_per_minute":100000000}',
                      {"X-Admin-Secret": load.ADMIN})
        scripts = {
            "jwt": load.lua(tmp, f"jwt-{side}", {"Authorization": f"Bearer {token}"}),
            "api_key": load.lua(tmp, f"key-{side}", {"Authorization": f"Bearer {key}"}),
        }
        gateways[side] = (p, base, scripts, [p.pid] + pids, postmaster)

    results = {(side, route): [] for side in "AB" for route in ("jwt", "api_key")}
    for r in range(ROUNDS):
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        for route in ("jwt", "api_key"):
            for side in order:
                p, base, scripts, pids, postmaster = gateways[side]
                if postmaster:
                    # The backends come and go with the pool: counted as they are now.
                    pids = pids + load.pids_of(postmaster.pid)
                path = "/api/chat" if route == "jwt" else "/v1/chat"
                before = load.cpu_ticks(pids)
                rps, total, non2xx, p50, p99 = load.wrk(base + path, scripts[route])
                ticks = load.cpu_ticks(pids) - before
                if non2xx:
                    raise SystemExit(f"{side} {route}: {non2xx} non-2xx responses")
                us = ticks / load.CLK_TCK * 1e6 / max(total, 1)
                results[(side, route)].append((rps, us, p99))
                print(f"round {r + 1} {route:8} {side}: {rps:9.0f} req/s {us:6.2f} us/req p99 {p99:.2f} ms",
                      file=sys.stderr)

    print(f"\ninterleaved A/B, {ROUNDS} rounds of {load.DURATION}s, wrk -t2 -c64, {WORKERS} worker(s), "
          f"{store} store, medians")
    print(f"A = {binaries['A']}{' (minting)' if mint['A'] else ''}")
    print(f"B = {binaries['B']}{' (minting)' if mint['B'] else ''}")
    print("| route | A req/s | B req/s | B/A | A us/req | B us/req | B/A | A p99 ms | B p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for route in ("jwt", "api_key"):
        a, b = results[("A", route)], results[("B", route)]
        med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
        print(f"| {route} | {med(a, 0):.0f} | {med(b, 0):.0f} | {med(b, 0) / med(a, 0):.3f} "
              f"| {med(a, 1):.2f} | {med(b, 1):.2f} | {med(b, 1) / med(a, 1):.3f} "
              f"| {med(a, 2):.2f} | {med(b, 2):.2f} |")


if __name__ == "__main__":
    try:
        main()
    finally:
        load.stop_all(5)
