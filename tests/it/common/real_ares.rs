//! The real ARES server (`../shared/ares`: dirmacs/ares at 81aa736 with its own PostgreSQL and a
//! stub LLM), started by its `start.sh` on free loopback ports and stopped by `stop.sh` on drop.
//! Where `../shared/ares` is absent (a checkout elsewhere), [`RealAres::start`] prints one line
//! naming what is missing and returns `None`: the test then ends without asserting anything,
//! and says so.

use std::path::PathBuf;
use std::process::Command;

/// ARES's `JWT_SECRET` in these tests (the gateway mints with it: `ARES_UPSTREAM_JWT_SECRET`).
pub const ARES_JWT_SECRET: &str = "real-ares-jwt-secret-0123456789abcdef";
/// ARES's `ADMIN_API_KEY` (one of the gateway's admin secrets, so `/api/admin/` passes through).
pub const ARES_ADMIN_KEY: &str = "real-ares-admin-secret-0123456789";

pub struct RealAres {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// ARES's own database.
    pub database_url: String,
    work: tempfile::TempDir,
    dir: PathBuf,
}

fn shared_ares() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/ares")
}

impl RealAres {
    /// Start ARES, or `None` (with one printed line) where `../shared/ares` is absent.
    pub fn start(test: &str) -> Option<RealAres> {
        let dir = shared_ares();
        if !dir.join("start.sh").is_file() || !dir.join("ares-server").is_file() {
            println!(
                "SKIPPED {test}: the real ARES is not here ({} has no start.sh and ares-server)",
                dir.display()
            );
            return None;
        }
        let work = tempfile::tempdir().unwrap();
        let (pg, ares, llm) = (super::free_port(), super::free_port(), super::free_port());
        let out = Command::new("bash")
            .arg(dir.join("start.sh"))
            .arg(work.path())
            .args([pg.to_string(), ares.to_string(), llm.to_string()])
            .env("JWT_SECRET", ARES_JWT_SECRET)
            .env("ADMIN_API_KEY", ARES_ADMIN_KEY)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let ready = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ares ready: "))
            .map(str::to_string);
        let Some(ready) = ready.filter(|_| out.status.success()) else {
            let log = std::fs::read_to_string(work.path().join("ares.log")).unwrap_or_default();
            let _ = Command::new("bash")
                .arg(dir.join("stop.sh"))
                .arg(work.path())
                .status();
            panic!(
                "the real ARES did not start: {stdout} {} {}",
                String::from_utf8_lossy(&out.stderr),
                log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
            );
        };
        let (url, db) = ready
            .split_once(" database: ")
            .expect("start.sh prints the URL and the database");
        Some(RealAres {
            url: url.trim().to_string(),
            database_url: db.trim().to_string(),
            work,
            dir,
        })
    }

    /// A client of ARES's database.
    pub async fn db(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
            .await
            .expect("ARES's database answers");
        tokio::spawn(conn);
        client
    }

    /// ARES's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("ares.log")).unwrap_or_default()
    }
}

impl Drop for RealAres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(self.dir.join("stop.sh"))
            .arg(self.work.path())
            .status();
    }
}
