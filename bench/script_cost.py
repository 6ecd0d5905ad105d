#!/usr/bin/env python3
"""Instructions redis-server spends per limiter decision (`EVALSHA` of the limiter script),
counted by callgrind, for the script at one or more git revisions.

    python3 bench/script_cost.py HEAD                 # the script in the work tree's HEAD
    python3 bench/script_cost.py OLD_REV HEAD         # side by side
    WANT=8 python3 bench/script_cost.py HEAD          # a lease of 8 asked for each call

Each revision's `LIMIT_SCRIPT` (src/store/redis/mod.rs) is loaded into a redis-server running
under `valgrind --tool=callgrind`; `redis-benchmark -c 1` sends the same decision (an API key's
plan: per-minute GCRA, per-day and per-month calendar windows, a token budget; limits high
enough never to refuse) 2,000 and then 12,000 times to two fresh servers, and the difference
divided by 10,000 is one call, without start-up. Scripts from before leases (no `want`, `back`
and `back_calendar` arguments) are called with their own argument layout. The count moves
with the script, not with the machine's load. Only loopback addresses are used.
"""

import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402

NOW = 1_796_227_200_000
DAY_END = NOW + 86_400_000
MONTH_END = NOW + 20 * 86_400_000
KEYS = ["4", "{t:a}:m", "{t:a}:d", "{t:a}:mo", "{t:a}:tok"]
WINDOWS = ["g", "1000000000", "60000",
           "c", "1000000000000", str(DAY_END),
           "c", "1000000000000", str(MONTH_END),
           "k", "1000000000000", str(MONTH_END)]


def script_at(rev):
    src = subprocess.run(["git", "show", f"{rev}:src/store/redis/mod.rs"], check=True,
                         capture_output=True, text=True).stdout
    m = re.search(r'const LIMIT_SCRIPT: &str = r#"\n(.*?)"#;', src, re.S)
    if not m:
        sys.exit(f"no LIMIT_SCRIPT at {rev}")
    return m.group(1)


def instructions(script, calls, tmp):
    port = load.free_port()
    out = os.path.join(tmp, f"cg-{port}.out")
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "redis-server",
         "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cli = ["redis-cli", "-p", str(port)]
    deadline = time.time() + 60
    while subprocess.run(cli + ["PING"], capture_output=True).returncode != 0:
        if time.time() > deadline:
            server.kill()
            sys.exit("redis-server under valgrind did not start")
        time.sleep(0.2)
    sha = subprocess.run(cli + ["SCRIPT", "LOAD", script], check=True, capture_output=True,
                         text=True).stdout.strip()
    leases = "local want = tonumber(ARGV[6])" in script
    args = [NOW, "1", "0", "0", "0"] + ([os.environ.get("WANT", "1"), "0", "0"] if leases else [])
    subprocess.run(["redis-benchmark", "-p", str(port), "-c", "1", "-n", str(calls), "-q",
                    "EVALSHA", sha, *KEYS, *map(str, args), *WINDOWS],
                   check=True, capture_output=True)
    subprocess.run(cli + ["SHUTDOWN", "NOSAVE"], capture_output=True)
    server.wait(timeout=60)
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    sys.exit("no callgrind total")


def main():
    revs = sys.argv[1:] or ["HEAD"]
    with tempfile.TemporaryDirectory() as tmp:
        for rev in revs:
            script = script_at(rev)
            few, many = instructions(script, 2_000, tmp), instructions(script, 12_000, tmp)
            print(f"{rev}: {(many - few) // 10_000:,} instructions per EVALSHA")


if __name__ == "__main__":
    main()
