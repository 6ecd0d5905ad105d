//! Real `redis-server` processes for tests, on free loopback ports, stopped by PID.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    cluster: bool,
    /// What `redis-cli` needs to reach it (TLS).
    cli_args: Vec<String>,
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
    cli_with(port, &[], args)
}

/// `cli` with options before the command (`--tls --cacert ...`).
pub fn cli_with(port: u16, options: &[String], args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(options)
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is required (.ci/run installs redis-tools)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn wait_ping(port: u16) {
    wait_ping_with(port, &[])
}

fn wait_ping_with(port: u16, options: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli_with(port, options, &["PING"]) != "PONG" {
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
        Self::start_on(super::free_port(), extra, Vec::new())
    }

    fn start_on(port: u16, extra: &[String], cli_args: Vec<String>) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let child = spawn_with(port, dir.path(), false, extra);
        wait_ping_with(port, &cli_args);
        RedisServer {
            port,
            child: Some(child),
            dir,
            cluster: false,
            cli_args,
        }
    }

    /// A Redis serving TLS only (a replica of `primary` when given, replicating over TLS).
    pub fn start_tls(tls: &RedisTls, primary: Option<u16>) -> RedisServer {
        let port = super::free_port();
        let mut extra = tls.options(port);
        if let Some(p) = primary {
            extra.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
        }
        Self::start_on(port, &extra, tls.cli_args())
    }

    /// One command through redis-cli, over TLS when the server speaks only that.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_with(self.port, &self.cli_args, args)
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
        Self::start_with(None)
    }

    /// The same cluster serving TLS only, its bus too (`rediss+cluster://`).
    pub fn start_tls(tls: &RedisTls) -> RedisCluster {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&RedisTls>) -> RedisCluster {
        let cli_args = tls.map(RedisTls::cli_args).unwrap_or_default();
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = super::free_port();
            let dir = tempfile::tempdir().unwrap();
            let extra: Vec<String> = match tls {
                None => Vec::new(),
                Some(tls) => [
                    tls.options(port),
                    vec!["--tls-cluster".into(), "yes".into()],
                ]
                .concat(),
            };
            let child = spawn_with(port, dir.path(), true, &extra);
            nodes.push(RedisServer {
                port,
                child: Some(child),
                dir,
                cluster: true,
                cli_args: cli_args.clone(),
            });
        }
        for n in &nodes {
            wait_ping_with(n.port, &cli_args);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(&cli_args)
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
            while !n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not converge");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    pub fn url(&self) -> String {
        let hosts = loopback_hosts(self.nodes.iter().map(|n| n.port));
        let tls = self.nodes.first().is_some_and(|n| !n.cli_args.is_empty());
        let scheme = if tls {
            "rediss+cluster"
        } else {
            "redis+cluster"
        };
        format!("{scheme}://{hosts}")
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
    /// What `redis-cli` needs to reach them (TLS).
    cli_args: Vec<String>,
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
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|_| Sentinel::start(primary.port, None))
            .collect();
        Self::formed(primary, replica, sentinels, Vec::new())
    }

    /// The same group serving TLS only: nodes, replication and sentinels (`rediss+sentinel://`).
    pub fn start_tls(tls: &RedisTls) -> SentinelGroup {
        let primary = RedisServer::start_tls(tls, None);
        let replica = RedisServer::start_tls(tls, Some(primary.port));
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|_| Sentinel::start(primary.port, Some(tls)))
            .collect();
        Self::formed(primary, replica, sentinels, tls.cli_args())
    }

    fn formed(
        primary: RedisServer,
        replica: RedisServer,
        sentinels: Vec<Sentinel>,
        cli_args: Vec<String>,
    ) -> SentinelGroup {
        let group = SentinelGroup {
            primary,
            replica,
            sentinels,
            cli_args,
        };
        let cli = |port: u16, args: &[&str]| cli_with(port, &group.cli_args, args);
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
        let scheme = if self.cli_args.is_empty() {
            "redis+sentinel"
        } else {
            "rediss+sentinel"
        };
        format!("{scheme}://{hosts}/mymaster")
    }

    /// The port of the primary the sentinels name now.
    pub fn primary_port(&self) -> Option<u16> {
        let out = cli_with(
            self.sentinels[0].port,
            &self.cli_args,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
        );
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }
}

impl Sentinel {
    fn start(primary: u16, tls: Option<&RedisTls>) -> Sentinel {
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        let listen: String = match tls {
            None => format!("port {port}\n"),
            Some(tls) => tls
                .directives(port)
                .into_iter()
                .map(|(k, v)| format!("{k} {v}\n"))
                .collect(),
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\ndaemonize no\ndir {}\n\
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
        wait_ping_with(port, &tls.map(RedisTls::cli_args).unwrap_or_default());
        Sentinel {
            port,
            child,
            _dir: dir,
        }
    }
}

/// A private CA and a certificate for 127.0.0.1 for TLS-only Redis processes, with what
/// `redis-cli` needs to reach them.
pub struct RedisTls {
    pki: super::pki::Pki,
}

impl RedisTls {
    pub fn new() -> RedisTls {
        let pki = super::pki::Pki::new("ares redis test ca");
        pki.issue("redis", "redis");
        RedisTls { pki }
    }

    /// The CA certificate: what a client must trust (`SSL_CERT_FILE` for the gateway).
    pub fn ca(&self) -> String {
        self.pki.ca_path().display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.pki.dir.path().join(name).display().to_string()
    }

    /// [`Self::directives`] as `redis-server` command-line options.
    fn options(&self, port: u16) -> Vec<String> {
        self.directives(port)
            .into_iter()
            .flat_map(|(k, v)| [format!("--{k}"), v])
            .collect()
    }

    /// `redis-server` / `redis-sentinel` directives (also command-line options) serving TLS
    /// only on `port`, and speaking TLS to the nodes they replicate from or monitor.
    fn directives(&self, port: u16) -> Vec<(String, String)> {
        [
            ("port", "0".to_string()),
            ("tls-port", port.to_string()),
            ("tls-cert-file", self.path("redis.crt")),
            ("tls-key-file", self.path("redis.key")),
            ("tls-ca-cert-file", self.ca()),
            ("tls-auth-clients", "no".to_string()),
            ("tls-replication", "yes".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn cli_args(&self) -> Vec<String> {
        vec!["--tls".into(), "--cacert".into(), self.ca()]
    }
}
