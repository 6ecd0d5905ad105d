//! Real `redis-server` processes for tests, on free loopback ports, stopped by PID.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    cluster: bool,
}

fn spawn(port: u16, dir: &std::path::Path, cluster: bool) -> Child {
    spawn_with(port, dir, cluster, &[])
}

fn spawn_with(port: u16, dir: &std::path::Path, cluster: bool, extra: &[String]) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ])
    .args(["--protected-mode", "no", "--dir"])
    .arg(dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd.args(extra);
    if cluster {
        cmd.args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &format!("nodes-{port}.conf"),
        ]);
    }
    cmd.spawn()
        .expect("redis-server is required for this test (.ci/run installs it)")
}

/// Send one command with redis-cli and return its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is required (.ci/run installs redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(port, &["PING"]) != "PONG" {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A replica of the Redis on `primary`.
    pub fn start_replica_of(primary: u16) -> RedisServer {
        Self::start_with(&[
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ])
    }

    fn start_with(extra: &[String]) -> RedisServer {
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = spawn_with(port, dir.path(), false, extra);
        wait_ping(port);
        RedisServer {
            port,
            child: Some(child),
            dir,
            cluster: false,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill the process (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port (the data is gone: no persistence in tests).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(self.port, self.dir.path(), self.cluster));
        wait_ping(self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A local 3-master Redis Cluster.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = super::free_port();
            let dir = tempfile::tempdir().unwrap();
            let child = spawn(port, dir.path(), true);
            nodes.push(RedisServer {
                port,
                child: Some(child),
                dir,
                cluster: true,
            });
        }
        for n in &nodes {
            wait_ping(n.port);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not converge");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    pub fn url(&self) -> String {
        let hosts = loopback_hosts(self.nodes.iter().map(|n| n.port));
        format!("redis+cluster://{hosts}")
    }
}

/// `127.0.0.1:<port>,...` for a multi-host Redis URL.
fn loopback_hosts(ports: impl Iterator<Item = u16>) -> String {
    ports
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A primary, a replica of it, and three `redis-sentinel` processes monitoring it as `mymaster`
/// (down after 1 s, quorum 2).
pub struct SentinelGroup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<Sentinel>,
}

pub struct Sentinel {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SentinelGroup {
    pub fn start() -> SentinelGroup {
        let primary = RedisServer::start();
        let replica = RedisServer::start_replica_of(primary.port);
        let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(primary.port)).collect();
        let group = SentinelGroup {
            primary,
            replica,
            sentinels,
        };
        // A failover needs the replica in sync, and sentinels that know the replica and each
        // other (an election needs a majority of them).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced =
                cli(group.replica.port, &["INFO", "replication"]).contains("master_link_status:up");
            let known = group.sentinels.iter().all(|s| {
                let replicas = cli(s.port, &["SENTINEL", "REPLICAS", "mymaster"]);
                let peers = cli(s.port, &["SENTINEL", "SENTINELS", "mymaster"]);
                replicas.contains(&group.replica.port.to_string())
                    && group
                        .sentinels
                        .iter()
                        .filter(|o| o.port != s.port)
                        .all(|o| peers.contains(&o.port.to_string()))
            });
            if synced && known {
                return group;
            }
            assert!(Instant::now() < deadline, "the sentinel group did not form");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        let hosts = loopback_hosts(self.sentinels.iter().map(|s| s.port));
        format!("redis+sentinel://{hosts}/mymaster")
    }

    /// The port of the primary the sentinels name now.
    pub fn primary_port(&self) -> Option<u16> {
        let out = cli(
            self.sentinels[0].port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
        );
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }
}

impl Sentinel {
    fn start(primary: u16) -> Sentinel {
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        // Debian's redis-sentinel package; the same program is `redis-server --sentinel`.
        let mut cmd = if Command::new("redis-sentinel")
            .arg("--version")
            .output()
            .is_ok()
        {
            let mut c = Command::new("redis-sentinel");
            c.arg(&conf);
            c
        } else {
            let mut c = Command::new("redis-server");
            c.arg(&conf).arg("--sentinel");
            c
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel is required for this test (.ci/run installs it)");
        wait_ping(port);
        Sentinel {
            port,
            child,
            _dir: dir,
        }
    }
}
