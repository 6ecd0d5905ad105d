//! The Redis limiter under load: decisions per second, latency, and Redis commands per decision
//! (from `INFO commandstats`), against a `redis-server` started on a free loopback port; then the
//! cost curve: limiter state (Redis `used_memory`, and the memory store's RSS) and decisions per
//! second with 1,000 to 100,000 scopes held at their limits.
//! `cargo bench --bench redis_limiter` (`SCALE=1000x60,10000x60` picks the curve's points, as
//! scopes x per-hour limit). Under `cargo test` it runs a short smoke pass.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ares_gateway::config::Config;
use ares_gateway::ratelimit::{LocalLimiter, Window};
use ares_gateway::store::{RedisStore, Store};
use ares_gateway::util::now_ms;

fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn stat(info: &str, cmd: &str) -> u64 {
    // cmdstat_evalsha:calls=123,usec=...
    info.lines()
        .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn used_memory(port: u16) -> u64 {
    redis_cli(port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Resident bytes of this process.
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

/// The memory store's limiter with `scopes` held at `limit`: its RSS growth, and decisions/s.
fn memory_point(scopes: u64, limit: u64, decide_for: Duration) -> (u64, f64) {
    let limits = [(Window::Hour, limit)];
    let base = rss();
    let l = LocalLimiter::new();
    let now = now_ms();
    for s in 0..scopes {
        let scope = format!("t:s{s}");
        for _ in 0..limit {
            assert!(l.check(&scope, &limits, now).allowed());
        }
    }
    let grown = rss().saturating_sub(base);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < decide_for {
        for _ in 0..1000 {
            assert!(!l
                .check(&format!("t:s{}", n % scopes), &limits, now)
                .allowed());
            n += 1;
        }
    }
    (grown, n as f64 / started.elapsed().as_secs_f64())
}

/// [`memory_point`] in a new process of this bench, so that memory freed by an earlier point
/// cannot hide growth.
fn memory_point_in_child(scopes: u64, limit: u64, decide_for: Duration) -> (u64, f64) {
    let out = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .env(
                "MEMORY_POINT",
                format!("{scopes}x{limit}x{}", decide_for.as_millis()),
            )
            .output()
    });
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut parts = text.split_whitespace();
    let rss = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let rate = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (rss, rate)
}

/// `total` calls of `f(i)` on `tasks` concurrent tasks.
async fn run<F, Fut>(tasks: u64, total: u64, f: F)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut i = t;
                while i < total {
                    f(i).await;
                    i += tasks;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.expect("task");
    }
}

/// Calls of `f(i)` on `tasks` concurrent tasks for `time`; how many were made.
async fn run_for_time<F, Fut>(tasks: u64, time: Duration, f: F) -> u64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let f = f.clone();
            tokio::spawn(async move {
                let mut i = t;
                let mut n = 0u64;
                while started.elapsed() < time {
                    f(i).await;
                    i += tasks;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut n = 0;
    for h in handles {
        n += h.await.expect("task");
    }
    n
}

fn main() {
    if let Ok(point) = std::env::var("MEMORY_POINT") {
        let n: Vec<u64> = point.split('x').filter_map(|v| v.parse().ok()).collect();
        if let [scopes, limit, ms] = n[..] {
            let (rss, rate) = memory_point(scopes, limit, Duration::from_millis(ms));
            println!("{rss} {rate}");
        }
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("ares-bench-redis-{port}"));
    let _ = std::fs::create_dir_all(&dir);
    let mut child = match Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ])
        .arg(&dir)
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redis-server not available ({e}); skipping");
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_cli(port, &["PING"]).trim() != "PONG" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("redis://127.0.0.1:{port}");
        let cfg = Config::from_yaml(include_str!("../gateway.yaml"), &|k| match k {
            "ARES_STORE" => Some("redis".into()),
            "REDIS_URL" => Some(url.clone()),
            "ARES_ADMIN_SECRET" => Some("bench-admin-secret-0123".into()),
            "ARES_JWT_SECRET" => Some("bench-jwt-secret-0123456789abcdef0123".into()),
            _ => None,
        })
        .expect("config");
        let store: Arc<RedisStore> = RedisStore::connect(&cfg.store, &url).await.expect("connect");
        store.ping().await.expect("ping");
        // A pro-like plan: month, day, minute; 1,000 tenants rotating.
        let limits = [(Window::Month, 1u64 << 40), (Window::Day, 1 << 40), (Window::Minute, 100_000)];
        let run_for = if full { Duration::from_secs(5) } else { Duration::from_millis(200) };
        // Load the script once (EVALSHA, NOSCRIPT, SCRIPT LOAD), as a running gateway has.
        store.counters().rate_limit("t:warmup", &limits, now_ms()).await.expect("warm-up");
        let before = redis_cli(port, &["INFO", "commandstats"]);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = t;
                while started.elapsed() < run_for {
                    let scope = format!("t:ten_{}", i % 1000);
                    let s = Instant::now();
                    let d = store.counters().rate_limit(&scope, &limits, now_ms()).await.expect("decision");
                    assert!(d.allowed());
                    lat.push(s.elapsed());
                    i += 64;
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed();
        let after = redis_cli(port, &["INFO", "commandstats"]);
        all.sort();
        let n = all.len() as u64;
        let evalsha = stat(&after, "evalsha") - stat(&before, "evalsha");
        let eval = stat(&after, "eval") - stat(&before, "eval");
        let script_load = stat(&after, "script|load") + stat(&after, "script") - stat(&before, "script|load") - stat(&before, "script");
        let pct = |p: f64| all[((all.len() as f64 - 1.0) * p) as usize];
        println!("redis limiter, 64 concurrent tasks, 1,000 tenants, windows month+day+minute:");
        println!("  decisions      {n} in {elapsed:.2?} = {:.0}/s", n as f64 / elapsed.as_secs_f64());
        println!("  latency        p50 {:?}  p99 {:?}", pct(0.5), pct(0.99));
        println!(
            "  redis commands per decision: {:.3} (evalsha {evalsha}, eval {eval}, script load {script_load})",
            (evalsha + eval) as f64 / n as f64
        );
        assert_eq!(evalsha + eval, n, "exactly one script call per decision");

        let points = std::env::var("SCALE").unwrap_or_else(|_| {
            if full { "1000x60,10000x60,100000x60,1000x600,1000x6000".into() } else { "50x5".into() }
        });
        println!("cost curve: scopes filled to a per-hour limit, then decisions on them:");
        for point in points.split(',') {
            let Some((scopes, limit)) = point.split_once('x') else { continue };
            let (Ok(scopes), Ok(limit)) = (scopes.trim().parse::<u64>(), limit.trim().parse::<u64>()) else {
                continue;
            };
            let limits = [(Window::Hour, limit)];
            redis_cli(port, &["FLUSHALL"]);
            let base = used_memory(port);
            let fill = Instant::now();
            let shared = store.clone();
            run(64, scopes * limit, move |i| {
                let store = shared.clone();
                async move {
                    let d = store.counters().rate_limit(&format!("t:s{}", i % scopes), &limits, now_ms()).await;
                    assert!(d.expect("decision").allowed(), "filling admits");
                }
            })
            .await;
            let fill = fill.elapsed();
            let bytes = used_memory(port).saturating_sub(base);
            let decide_for = if full { Duration::from_secs(3) } else { Duration::from_millis(100) };
            let shared = store.clone();
            let n = run_for_time(64, decide_for, move |i| {
                let store = shared.clone();
                async move {
                    let d = store.counters().rate_limit(&format!("t:s{}", i % scopes), &limits, now_ms()).await;
                    // At or near its limit: room returns one request per hour/limit, so a fill
                    // slower than that leaves some room in the scopes filled first.
                    std::hint::black_box(d.expect("decision"));
                }
            })
            .await;
            println!(
                "  redis  {scopes:>7} scopes x {limit:>5}/h: {:>9} B/scope ({:>6.1} MiB), filled in {fill:.1?}, {:>7.0} decisions/s",
                bytes / scopes,
                bytes as f64 / 1048576.0,
                n as f64 / decide_for.as_secs_f64()
            );
            let (rss, rate) = memory_point_in_child(scopes, limit, decide_for);
            println!(
                "  memory {scopes:>7} scopes x {limit:>5}/h: {:>9} B/scope ({:>6.1} MiB RSS), {:>7.0} decisions/s (one thread)",
                rss / scopes,
                rss as f64 / 1048576.0,
                rate
            );
        }
        redis_cli(port, &["FLUSHALL"]);
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
