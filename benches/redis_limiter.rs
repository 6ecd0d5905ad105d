//! The Redis limiter under load: decisions per second, latency, and Redis commands per decision
//! (from `INFO commandstats`), against a `redis-server` started on a free loopback port.
//! `cargo bench --bench redis_limiter`. Under `cargo test` it runs a short smoke pass.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ares_gateway::config::Config;
use ares_gateway::ratelimit::Window;
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

fn main() {
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
        store.rate_limit("t:warmup", &limits, now_ms()).await.expect("warm-up");
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
                    let d = store.rate_limit(&scope, &limits, now_ms()).await.expect("decision");
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
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
