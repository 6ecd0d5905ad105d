#!/usr/bin/env python3
"""Load benchmark: ares-gateway side by side with HAProxy and nginx, on loopback.

    python3 bench/load.py            # ~7 minutes on 2 cores
    ROUNDS=1 DURATION=3 python3 bench/load.py

Starts a trivial nginx upstream, the gateway (memory store with one worker per core, with EdDSA tokens, and with
one worker, the Redis store with the Redis limiter and the PostgreSQL store on ARES's tables,
exact and with leases: the Redis and PostgreSQL rows count the database's CPU too), HAProxy doing the same job as the gateway's
JWT route (HS256 verified, exp checked, claims into headers, a per-subject rate limit in a stick
table) with two threads and with one, HAProxy and nginx as plain proxies, and the floor: a hyper
proxy on the gateway's connection plumbing that does none of the gateway's work
(examples/floor_proxy.rs). Installs wrk when missing. Runs every target interleaved ROUNDS times with wrk
(64 keep-alive connections, small JSON POSTs) and prints one table: requests/s, p50, p99, proxy
CPU microseconds per request (from the proxy processes' own CPU time in /proc), peak RSS, and the
ratios to the direct upstream and to HAProxy's same job. Only loopback addresses are used.
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = int(os.environ.get("DURATION", "8"))
CONNECTIONS = 64
JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123"
ADMIN = "bench-admin-secret-0123456789"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = '{"message":"Hello","agent_type":"product"}'

procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def spawn(cmd, env=None, **kw):
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p


def wait_http(url, timeout=15.0):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return time.monotonic() - start
        except Exception:
            time.sleep(0.005)
    raise SystemExit(f"{url} did not come up")


def call(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body.encode() if body else None, method=method)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def pids_of(pid):
    """The process and its children (nginx workers)."""
    out = [pid]
    try:
        for line in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
            out.append(int(line))
    except Exception:
        pass
    return out


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total


def peak_rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def wrk(url, script):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency", "-s", script, url],
        capture_output=True, text=True,
    ).stdout
    rps = float(next(l for l in out.splitlines() if l.startswith("Requests/sec:")).split()[1])
    total = int(next(l for l in out.splitlines() if "requests in" in l).split()[0])
    non2xx = 0
    for l in out.splitlines():
        if "Non-2xx" in l:
            non2xx = int(l.split()[-1])

    def pct(p):
        for l in out.splitlines():
            parts = l.split()
            if len(parts) == 2 and parts[0] == p:
                v = parts[1]
                for unit, mul in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
                    if v.endswith(unit):
                        return float(v[: -len(unit)]) * mul
        return float("nan")

    return rps, total, non2xx, pct("50%"), pct("99%")


def lua(dirname, name, headers, keys=None, method="POST"):
    path = os.path.join(dirname, f"{name}.lua")
    with open(path, "w") as f:
        f.write(f'wrk.method = "{method}"\n')
        if method == "POST":
            f.write(f"wrk.body = '{BODY}'\n")
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
        for k, v in headers.items():
            f.write(f'wrk.headers["{k}"] = "{v}"\n')
        if keys:
            f.write("keys = {" + ",".join(f'"{k}"' for k in keys) + "}\n")
            f.write("i = 0\nrequest = function()\n  i = i % #keys + 1\n")
            f.write('  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. keys[i], ["Content-Type"] = "application/json"})\nend\n')
    return path


def nginx_upstream(tmp, events=""):
    """The trivial upstream: nginx answering a small JSON body (and `events` on /api/v1/stream)."""
    up = free_port()
    stream = (f'    location /api/v1/stream {{ default_type text/event-stream; return 200 "{events}"; }}\n'
              if events else "")
    nginx_up = os.path.join(tmp, "nginx-up.conf")
    with open(nginx_up, "w") as f:
        f.write(f"""worker_processes 1; pid {tmp}/up.pid; error_log /dev/null;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{up} reuseport; client_body_buffer_size 16k;
{stream}    location / {{ default_type application/json; return 200 '{{"ok":true}}'; }} }} }}
""")
    spawn(["nginx", "-c", nginx_up, "-p", tmp, "-g", "daemon off;"])
    wait_http(f"http://127.0.0.1:{up}/")
    return up


# ARES's tables as the newer generation has them (the gateway keeps its users beside them).
ARES_TABLES = """
CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, tier TEXT NOT NULL DEFAULT 'free',
  created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
CREATE TABLE api_keys (id TEXT PRIMARY KEY,
  tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE, key_hash TEXT NOT NULL,
  key_prefix TEXT NOT NULL UNIQUE, name TEXT NOT NULL DEFAULT 'default',
  is_active INTEGER NOT NULL DEFAULT 1, created_at BIGINT NOT NULL, expires_at BIGINT,
  scopes TEXT NOT NULL DEFAULT 'full', last_used_at BIGINT);
"""


def postgres_server(tmp):
    """A PostgreSQL with Debian's defaults (durable commits) and ARES's tables; its URL."""
    import glob
    import pwd
    bindir = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
    port = free_port()
    d = os.path.join(tmp, f"pg-{port}")
    os.makedirs(d)
    os.chmod(tmp, 0o755)
    pre = []
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(d, pg.pw_uid, pg.pw_gid)
        pre = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]
    subprocess.run(pre + [f"{bindir}/initdb", "-D", f"{d}/data", "-U", "postgres", "--auth=trust"],
                   check=True, stdout=subprocess.DEVNULL)
    p = spawn(pre + [f"{bindir}/postgres", "-D", f"{d}/data", "-p", str(port), "-k", d,
                     "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"])
    for _ in range(100):
        if subprocess.run([f"{bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                          capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    psql = [f"{bindir}/psql", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    subprocess.run(psql + ["-c", "CREATE DATABASE ares"], check=True)
    subprocess.run(psql + ["-d", "ares", "-c", ARES_TABLES], check=True)
    return p, f"postgres://postgres@127.0.0.1:{port}/ares"


def bench_config(tmp, source=None):
    """The gateway's config for benchmarks: calendar limits so a long run is never refused."""
    with open(source or os.path.join(ROOT, "gateway.yaml")) as f:
        yaml = f.read()
    yaml = yaml.replace('  user:\n    requests_per_minute: "${ARES_USER_REQUESTS_PER_MINUTE:-600}"',
                        "  user:\n    requests_per_day: 1000000000")
    yaml = yaml.replace("  enterprise:\n    requests_per_minute: 6000",
                        "  enterprise:\n    requests_per_day: 1000000000\n    requests_per_month: 1000000000")
    conf = os.path.join(tmp, "gateway.yaml")
    with open(conf, "w") as f:
        f.write(yaml)
    return conf


def credentials(base, with_tenant=False):
    """A tenant's API key and a user's access token on the gateway at `base` (and the tenant)."""
    tenant = call("POST", f"{base}/api/admin/provision-client",
                  '{"name":"bench","tier":"enterprise","api_key_name":"k"}', {"X-Admin-Secret": ADMIN})
    key = tenant["raw_api_key"]
    call("POST", f"{base}/api/auth/register",
         '{"email":"bench@example.com","password":"bench-password-123","name":"B"}')
    token = call("POST", f"{base}/api/auth/login",
                 '{"email":"bench@example.com","password":"bench-password-123"}')["access_token"]
    return (key, token, tenant["tenant_id"]) if with_tenant else (key, token)


def main():
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    for tool in ("nginx", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (apt-get install nginx-light redis-server)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "ares-gateway", "--example", "floor_proxy"],
                   cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "ares-gateway")
    floor_binary = os.path.join(ROOT, "target", "release", "examples", "floor_proxy")
    tmp = tempfile.mkdtemp(prefix="ares-bench-")

    # The trivial upstream: nginx answering a small JSON body, and a 4 KiB event stream.
    events = "".join(f"data: event {i:04d} padding-padding-padding\\n\\n" for i in range(40))
    up = nginx_upstream(tmp, events)
    # The access log at warn (HAProxy and nginx log nothing here either).
    conf = bench_config(tmp)

    def gateway(store, redis_url="", workers=0, conf=conf, extra=None):
        port = free_port()
        env = dict(os.environ, ARES_LISTEN=f"127.0.0.1:{port}", ARES_METRICS_LISTEN="off",
                   ARES_UPSTREAM=f"http://127.0.0.1:{up}", ARES_ADMIN_SECRET=ADMIN,
                   ARES_JWT_SECRET=JWT_SECRET, ARES_STORE=store, REDIS_URL=redis_url, ARES_LOG="warn",
                   ARES_WORKERS=str(workers), ARES_DATA_DIR=os.path.join(tmp, f"data-{port}"))
        env.update(extra or {})
        start = time.monotonic()
        p = spawn([binary, "serve", "--config", conf], env=env)
        ready = wait_http(f"http://127.0.0.1:{port}/healthz")
        return p, port, ready, start

    gw, gw_port, ready_s, _ = gateway("memory")
    base = f"http://127.0.0.1:{gw_port}"
    key, token = credentials(base)
    keys = [call("POST", f"{base}/api/admin/provision-client",
                 f'{{"name":"t{i}","tier":"enterprise","api_key_name":"k"}}', {"X-Admin-Secret": ADMIN})["raw_api_key"]
            for i in range(1000)]

    # The same gateway with one worker (one accept loop, one thread): on a box where the load
    # generator and the upstream share the cores, the measured better choice.
    gw1, gw1_port, _, _ = gateway("memory", workers=1)
    call("POST", f"http://127.0.0.1:{gw1_port}/api/auth/register",
         '{"email":"bench@example.com","password":"bench-password-123","name":"B"}')
    token1 = call("POST", f"http://127.0.0.1:{gw1_port}/api/auth/login",
                  '{"email":"bench@example.com","password":"bench-password-123"}')["access_token"]

    # The memory store signing EdDSA (no HS256 secret: a generated Ed25519 key).
    gwd, gwd_port, _, _ = gateway("memory", extra={"ARES_JWT_SECRET": ""})
    _, dtoken = credentials(f"http://127.0.0.1:{gwd_port}")

    # The embedded store (the default): a durable file on this machine's disk.
    gwe, gwe_port, ready_e, _ = gateway("embedded")
    ekey, etoken = credentials(f"http://127.0.0.1:{gwe_port}")

    def redis_server():
        port = free_port()
        p = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", tmp])
        time.sleep(0.3)
        return p, port

    redis1, redis_port = redis_server()
    gwr, gwr_port, _, _ = gateway("redis", f"redis://127.0.0.1:{redis_port}")
    rkey, rtoken = credentials(f"http://127.0.0.1:{gwr_port}")

    # Redis with the shipped per-minute limits in force (GCRA): the shipped gateway.yaml, the user
    # limit and the tenant's minute limit raised high enough never to refuse.
    redis2, redis2_port = redis_server()
    gwm, gwm_port, _, _ = gateway("redis", f"redis://127.0.0.1:{redis2_port}",
                                  conf=os.path.join(ROOT, "gateway.yaml"),
                                  extra={"ARES_USER_REQUESTS_PER_MINUTE": "100000000"})
    mbase = f"http://127.0.0.1:{gwm_port}"
    mkey, mtoken, tenant_id = credentials(mbase, with_tenant=True)
    call("PUT", f"{mbase}/api/admin/tenants/{tenant_id}/limits", '{"requests_per_minute":100000000}',
         {"X-Admin-Secret": ADMIN})
    # The same with leases on (rate_limits.lease_requests): most requests decided in the gateway.
    redis3, redis3_port = redis_server()
    gwl, gwl_port, _, _ = gateway("redis", f"redis://127.0.0.1:{redis3_port}",
                                  conf=os.path.join(ROOT, "gateway.yaml"),
                                  extra={"ARES_USER_REQUESTS_PER_MINUTE": "100000000",
                                         "ARES_LEASE_REQUESTS": os.environ.get("LEASE_REQUESTS", "64")})
    lbase = f"http://127.0.0.1:{gwl_port}"
    lkey, ltoken, ltenant_id = credentials(lbase, with_tenant=True)
    call("PUT", f"{lbase}/api/admin/tenants/{ltenant_id}/limits", '{"requests_per_minute":100000000}',
         {"X-Admin-Secret": ADMIN})

    # The postgres store (ARES's database): counters exact in PostgreSQL, then with leases.
    pg1, pg1_url = postgres_server(tmp)
    gwp, gwp_port, _, _ = gateway("postgres", extra={"DATABASE_URL": pg1_url})
    pkey, ptoken = credentials(f"http://127.0.0.1:{gwp_port}")
    pg2, pg2_url = postgres_server(tmp)
    gwpl, gwpl_port, _, _ = gateway("postgres", extra={
        "DATABASE_URL": pg2_url, "ARES_LEASE_REQUESTS": os.environ.get("LEASE_REQUESTS", "64")})
    plkey, pltoken = credentials(f"http://127.0.0.1:{gwpl_port}")
    # ... with the counters in Redis (REDIS_URL set as well).
    pg3, pg3_url = postgres_server(tmp)
    redis4, redis4_port = redis_server()
    gwpr, gwpr_port, _, _ = gateway("postgres", f"redis://127.0.0.1:{redis4_port}",
                                    extra={"DATABASE_URL": pg3_url})
    prkey, prtoken = credentials(f"http://127.0.0.1:{gwpr_port}")

    # HAProxy: the same job as the JWT route, and a plain proxy. nginx: a plain proxy.
    hj, hp, np_ = free_port(), free_port(), free_port()
    hcfg = os.path.join(tmp, "haproxy.cfg")
    with open(hcfg, "w") as f:
        f.write(f"""global
  nbthread 2
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
backend up
  server s1 127.0.0.1:{up}
backend limits
  stick-table type string len 64 size 100k expire 60s store http_req_rate(60s)
frontend jwt
  bind 127.0.0.1:{hj}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request deny deny_status 401 unless {{ var(txn.alg) -m str HS256 }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{JWT_SECRET}") -m int 1 }}
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
  http-request set-var(txn.sub) var(txn.bearer),jwt_payload_query('$.sub')
  http-request set-header X-User-Id %[var(txn.sub)]
  http-request set-header X-User-Email %[var(txn.bearer),jwt_payload_query('$.email')]
  http-request set-header X-Auth-Method jwt
  http-request del-header Authorization
  http-request track-sc0 var(txn.sub) table limits
  http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt 100000000 }}
  default_backend up
frontend plain
  bind 127.0.0.1:{hp}
  default_backend up
""")
    # `txn.now` for the exp check.
    with open(hcfg) as f:
        text = f.read().replace("  http-request set-var(txn.exp)", "  http-request set-var(txn.now) date\n  http-request set-var(txn.exp)")
    with open(hcfg, "w") as f:
        f.write(text)
    check = subprocess.run(["haproxy", "-c", "-f", hcfg], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit("haproxy config: " + check.stdout + check.stderr)
    hap = spawn(["haproxy", "-f", hcfg, "-db"])
    # HAProxy's same job on one thread too, so each side is also measured at one thread.
    hj1 = free_port()
    hcfg1 = os.path.join(tmp, "haproxy1.cfg")
    with open(hcfg1, "w") as f:
        job_only = text[:text.index("frontend plain")]
        f.write(job_only.replace("nbthread 2", "nbthread 1").replace(f"bind 127.0.0.1:{hj}", f"bind 127.0.0.1:{hj1}"))
    hap1 = spawn(["haproxy", "-f", hcfg1, "-db"])
    ncfg = os.path.join(tmp, "nginx-proxy.conf")
    with open(ncfg, "w") as f:
        f.write(f"""worker_processes 2; pid {tmp}/proxy.pid; error_log /dev/null;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{ listen 127.0.0.1:{np_}; location / {{ proxy_pass http://up; proxy_http_version 1.1;
    proxy_set_header Connection ""; }} }} }}
""")
    ngx = spawn(["nginx", "-c", ncfg, "-p", tmp, "-g", "daemon off;"])
    # The floor: the gateway's connection plumbing on hyper with none of its work
    # (examples/floor_proxy.rs), one worker per core like the gateway.
    fp = free_port()
    floor = spawn([floor_binary, f"127.0.0.1:{fp}", f"127.0.0.1:{up}"])
    time.sleep(0.5)
    wait_http(f"http://127.0.0.1:{fp}/")
    # HAProxy verifies the same token; check it answers 200 before measuring.
    req = urllib.request.Request(f"http://127.0.0.1:{hj}/api/chat", data=BODY.encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200, "haproxy jwt job refused a valid token"

    plain = lua(tmp, "plain", {})
    jwt = lua(tmp, "jwt", {"Authorization": f"Bearer {token}"})
    jwt1 = lua(tmp, "jwt1", {"Authorization": f"Bearer {token1}"})
    api = lua(tmp, "api", {"Authorization": f"Bearer {key}"})
    rapi = lua(tmp, "rapi", {"Authorization": f"Bearer {rkey}"})
    eapi = lua(tmp, "eapi", {"Authorization": f"Bearer {ekey}"})
    ejwt = lua(tmp, "ejwt", {"Authorization": f"Bearer {etoken}"})
    rjwt = lua(tmp, "rjwt", {"Authorization": f"Bearer {rtoken}"})
    papi = lua(tmp, "papi", {"Authorization": f"Bearer {pkey}"})
    pjwt = lua(tmp, "pjwt", {"Authorization": f"Bearer {ptoken}"})
    plapi = lua(tmp, "plapi", {"Authorization": f"Bearer {plkey}"})
    pljwt = lua(tmp, "pljwt", {"Authorization": f"Bearer {pltoken}"})
    prapi = lua(tmp, "prapi", {"Authorization": f"Bearer {prkey}"})
    prjwt = lua(tmp, "prjwt", {"Authorization": f"Bearer {prtoken}"})
    mapi = lua(tmp, "mapi", {"Authorization": f"Bearer {mkey}"})
    mjwt = lua(tmp, "mjwt", {"Authorization": f"Bearer {mtoken}"})
    lapi = lua(tmp, "lapi", {"Authorization": f"Bearer {lkey}"})
    ljwt = lua(tmp, "ljwt", {"Authorization": f"Bearer {ltoken}"})
    djwt = lua(tmp, "djwt", {"Authorization": f"Bearer {dtoken}"})
    rot = lua(tmp, "rot", {}, keys=keys)
    sse_direct = lua(tmp, "sse_direct", {}, method="GET")
    sse = lua(tmp, "sse", {"Authorization": f"Bearer {key}"}, method="GET")
    targets = [
        ("direct upstream", f"http://127.0.0.1:{up}/api/chat", plain, None),
        ("haproxy jwt (same job)", f"http://127.0.0.1:{hj}/api/chat", jwt, hap.pid),
        ("haproxy jwt (same job, 1 thread)", f"http://127.0.0.1:{hj1}/api/chat", jwt, hap1.pid),
        ("haproxy plain proxy", f"http://127.0.0.1:{hp}/api/chat", plain, hap.pid),
        ("nginx plain proxy", f"http://127.0.0.1:{np_}/api/chat", plain, ngx.pid),
        ("hyper floor (no gateway work)", f"http://127.0.0.1:{fp}/api/chat", plain, floor.pid),
        ("gateway jwt (memory)", f"{base}/api/chat", jwt, gw.pid),
        ("gateway jwt (memory, 1 worker)", f"http://127.0.0.1:{gw1_port}/api/chat", jwt1, gw1.pid),
        ("gateway jwt eddsa (memory)", f"http://127.0.0.1:{gwd_port}/api/chat", djwt, gwd.pid),
        ("gateway api key (memory)", f"{base}/v1/chat", api, gw.pid),
        ("gateway jwt (embedded)", f"http://127.0.0.1:{gwe_port}/api/chat", ejwt, gwe.pid),
        ("gateway api key (embedded)", f"http://127.0.0.1:{gwe_port}/v1/chat", eapi, gwe.pid),
        ("gateway api key (redis)", f"http://127.0.0.1:{gwr_port}/v1/chat", rapi, gwr.pid),
        ("gateway jwt (redis)", f"http://127.0.0.1:{gwr_port}/api/chat", rjwt, gwr.pid),
        ("gateway api key (postgres)", f"http://127.0.0.1:{gwp_port}/v1/chat", papi, gwp.pid),
        ("gateway jwt (postgres)", f"http://127.0.0.1:{gwp_port}/api/chat", pjwt, gwp.pid),
        ("gateway api key (postgres, leases)", f"http://127.0.0.1:{gwpl_port}/v1/chat", plapi, gwpl.pid),
        ("gateway jwt (postgres, leases)", f"http://127.0.0.1:{gwpl_port}/api/chat", pljwt, gwpl.pid),
        ("gateway api key (postgres, redis counters)", f"http://127.0.0.1:{gwpr_port}/v1/chat", prapi, gwpr.pid),
        ("gateway jwt (postgres, redis counters)", f"http://127.0.0.1:{gwpr_port}/api/chat", prjwt, gwpr.pid),
        ("gateway api key (redis, per-minute)", f"{mbase}/v1/chat", mapi, gwm.pid),
        ("gateway jwt (redis, per-minute)", f"{mbase}/api/chat", mjwt, gwm.pid),
        ("gateway api key (redis, per-minute, leases)", f"{lbase}/v1/chat", lapi, gwl.pid),
        ("gateway jwt (redis, per-minute, leases)", f"{lbase}/api/chat", ljwt, gwl.pid),
        ("gateway 1,000 keys rotating", f"{base}/v1/chat", rot, gw.pid),
        ("direct upstream sse", f"http://127.0.0.1:{up}/api/v1/stream", sse_direct, None),
        ("gateway sse (api key)", f"{base}/v1/stream", sse, gw.pid),
    ]
    # TARGETS=jwt,embedded runs only the rows whose name contains one of the words (plus the
    # direct upstream and HAProxy's job, the references).
    only = [w for w in os.environ.get("TARGETS", "").split(",") if w]
    if only:
        targets = [t for t in targets if t[0] in ("direct upstream", "haproxy jwt (same job)")
                   or any(w in t[0] for w in only)]
    results = {name: [] for name, *_ in targets}
    for r in range(ROUNDS):
        for name, url, script, pid in targets:
            pids = pids_of(pid) if pid else []
            if "(redis" in name:
                server = redis3 if "leases" in name else redis2 if "per-minute" in name else redis1
                pids = pids + [server.pid]
            if "(postgres" in name:
                # The database's CPU counts too: the postmaster and its backends (and Redis's).
                db = pg2 if "leases" in name else pg3 if "redis counters" in name else pg1
                pids = pids + pids_of(db.pid)
                if "redis counters" in name:
                    pids = pids + [redis4.pid]
            before = cpu_ticks(pids)
            rps, total, non2xx, p50, p99 = wrk(url, script)
            used = cpu_ticks(pids) - before
            cpu_us = used / CLK_TCK * 1e6 / total if pids and total else float("nan")
            results[name].append((rps, p50, p99, cpu_us, peak_rss_kib(pids) / 1024 if pids else float("nan"), non2xx))
            print(f"round {r + 1}/{ROUNDS} {name:32} {rps:10.0f} req/s  non-2xx {non2xx}", file=sys.stderr)

    def med(name, i):
        return statistics.median(v[i] for v in results[name])

    direct = med("direct upstream", 0)
    hap_job = med("haproxy jwt (same job)", 0)
    print(f"\nares-gateway load benchmark: {ROUNDS} interleaved rounds of {DURATION}s, wrk -t2 -c{CONNECTIONS}, "
          f"{os.cpu_count()} cores, everything on loopback (medians)")
    print(f"gateway ready {ready_s * 1000:.0f} ms after start (memory store), {ready_e * 1000:.0f} ms (embedded store)\n")
    print(f"| target | req/s | p50 ms | p99 ms | proxy CPU us/req | peak RSS MiB | x direct | x haproxy job | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, *_ in targets:
        rps, p50, p99, cpu, rss = (med(name, i) for i in range(5))
        non2xx = max(v[5] for v in results[name])
        ref = direct if "sse" not in name else med("direct upstream sse", 0)
        print(f"| {name} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {cpu:.1f} | {rss:.1f} | {rps / ref:.2f} | "
              f"{rps / hap_job:.2f} | {non2xx} |")


OTLP_SINK = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


def otlp_sink():
    """An OTLP/HTTP receiver that accepts and discards every export; returns its base URL."""
    port = free_port()
    spawn([sys.executable, "-c", OTLP_SINK, str(port)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def stop_all(timeout=5):
    """Stop every process this run started (SIGTERM, then SIGKILL after `timeout`)."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except Exception:
            p.kill()


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
