//! The `ares-gateway` command: `serve`, `check`, `demo`, `export`, `import`, `import-ares`,
//! `admin`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ares_gateway::config::{Config, StoreBackend};

// Chosen by measurement (BENCHMARKS.md): 4% more requests/s and 4% less CPU per request than
// glibc malloc on the JWT route. glibc's peak RSS was lower (15 vs 22 MiB); both are far below
// the 64 MiB target.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use ares_gateway::server::accept;
use ares_gateway::{cmd::demo, Gateway};

#[derive(Parser)]
#[command(
    name = "ares-gateway",
    version,
    about = "Authentication gateway and reverse proxy for ARES"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file.
        #[arg(long, env = "ARES_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Validate the config: print every problem and exit 1, or print the route table.
    Check {
        #[arg(long, env = "ARES_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Everything embedded (memory store, echo upstream, generated secrets) and a walkthrough.
    Demo,
    /// Every stored record as JSON lines on stdout (hashes, never raw secrets; still
    /// sensitive). With the embedded store, stop the gateway first or use GET /api/admin/export.
    Export {
        #[arg(long, env = "ARES_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// Load an export (`-` for stdin) into the store the config names; idempotent. Exit 0: all
    /// loaded; 2: done, some records skipped; 1: failed or lines that are not records.
    Import {
        file: PathBuf,
        #[arg(long, env = "ARES_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
    },
    /// The admin API of a running gateway: tenants, keys, users, audit. The secret comes from
    /// ARES_ADMIN_SECRET. Exit 0: done; 1: refused (4xx); 2: usage; 3: unreachable or 5xx.
    Admin(ares_gateway::cmd::admin::AdminArgs),
    /// Copy ARES's users, tenants and API keys from its PostgreSQL database (read-only) into the
    /// store the config names. Exit 0: all present; 2: done, some rows skipped; 1: failed.
    ImportAres {
        /// `postgres://user[:password]@host[:port]/database` of ARES (plain TCP).
        #[arg(long, env = "ARES_DATABASE_URL", hide_env_values = true)]
        database_url: String,
        #[arg(long, env = "ARES_CONFIG", default_value = "gateway.yaml")]
        config: PathBuf,
        /// Read and check everything, print the counts, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Serve { config } => match Config::load(&config) {
            Ok(cfg) => serve(cfg),
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Demo => demo_cmd(),
        Command::Export { config } => export(&config),
        Command::Admin(args) => match runtime() {
            Ok(rt) => ExitCode::from(rt.block_on(ares_gateway::cmd::admin::run(args))),
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                ExitCode::from(3)
            }
        },
        Command::Import { file, config } => import(&file, &config),
        Command::ImportAres {
            database_url,
            config,
            dry_run,
        } => import_ares(&database_url, &config, dry_run),
    }
}

/// The config and a runtime for a one-shot command on the configured store.
fn store_command(
    name: &str,
    config: &std::path::Path,
) -> Result<(Config, tokio::runtime::Runtime), ExitCode> {
    let cfg = Config::load(config).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(1)
    })?;
    let rt = runtime().map_err(|e| {
        eprintln!("{name}: cannot start the runtime: {e}");
        ExitCode::from(1)
    })?;
    Ok((cfg, rt))
}

fn export(config: &std::path::Path) -> ExitCode {
    let (cfg, rt) = match store_command("export", config) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let done = rt.block_on(async {
        let store = ares_gateway::server::gateway::build_store(&cfg).await?;
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let n = ares_gateway::cmd::transfer::export(store.clone(), &mut out).await?;
        store.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<u64, String>(n)
    });
    match done {
        Ok(n) => {
            eprintln!("export: {n} records");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("export: {e}");
            ExitCode::from(1)
        }
    }
}

fn import(file: &std::path::Path, config: &std::path::Path) -> ExitCode {
    let (cfg, rt) = match store_command("import", config) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if cfg.store.backend == ares_gateway::config::StoreBackend::Memory {
        eprintln!("import: the memory store keeps nothing after this command exits; set ARES_STORE=embedded or redis");
        return ExitCode::from(1);
    }
    let mut input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        match std::fs::File::open(file) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!("import: cannot read {}: {e}", file.display());
                return ExitCode::from(1);
            }
        }
    };
    let done = rt.block_on(async {
        let store = ares_gateway::server::gateway::build_store(&cfg).await?;
        let report = ares_gateway::cmd::transfer::import(&*store, &mut input).await;
        store.shutdown().await.map_err(|e| e.to_string())?;
        report
    });
    match done {
        Ok(report) => {
            print!("{report}");
            if !report.bad.is_empty() {
                ExitCode::from(1)
            } else if !report.skipped.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("import: {e}");
            ExitCode::from(1)
        }
    }
}

fn import_ares(database_url: &str, config: &std::path::Path, dry_run: bool) -> ExitCode {
    let cfg = match Config::load(config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(1);
        }
    };
    if cfg.store.backend == ares_gateway::config::StoreBackend::Memory && !dry_run {
        eprintln!(
            "import-ares: the memory store keeps nothing after this command exits; set ARES_STORE=redis (or use --dry-run)"
        );
        return ExitCode::from(1);
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("import-ares: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let done = rt.block_on(async {
        let mut client = ares_gateway::cmd::import_ares::connect(database_url).await?;
        // A dry run writes nothing: an embedded store that does not exist yet is not created
        // (it holds none of the rows, as an empty memory store does).
        let absent = match &cfg.store.backend {
            StoreBackend::Embedded(o) => !o
                .dir
                .join(ares_gateway::store::embedded::file::FILE_NAME)
                .exists(),
            _ => false,
        };
        let store: std::sync::Arc<dyn ares_gateway::store::Store> = if dry_run && absent {
            std::sync::Arc::new(ares_gateway::store::MemoryStore::new())
        } else {
            ares_gateway::server::gateway::build_store(&cfg).await?
        };
        let store = ares_gateway::store::StoreHandle::new(store, cfg.store.command_timeout);
        ares_gateway::cmd::import_ares::run(&mut client, &store, &cfg.limits.plans, dry_run).await
    });
    match done {
        Ok(report) => {
            print!("{report}");
            if report.skipped.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("import-ares: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
            println!("{}: ok", path.display());
            println!();
            print!("{}", cfg.routes);
            println!();
            for u in &cfg.upstreams {
                let scheme = if u.https { "https" } else { "http" };
                println!(
                    "upstream {} = {scheme}://{}{}",
                    u.name, u.authority, u.base_path
                );
            }
            if cfg.auth.admin_secret_generated || cfg.auth.jwt_secret_generated {
                println!(
                    "note: secrets unset; they will be generated at start-up (development use: memory store, or kept in the embedded store's data directory)"
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Log to stderr from a thread of its own. A log reader that stops reading (a full pipe) must not
/// stall the gateway: lines wait in a bounded queue and, when it is full, are dropped rather than
/// block a request (measured: with a blocking writer, about 300 warnings into an unread pipe
/// froze every request). The guard flushes what is queued when the process ends.
fn init_tracing() -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ARES_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("ARES_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(64 * 1024)
        .thread_name("ares-log")
        .finish(std::io::stderr());
    // A log reader that goes away (a closed pipe) must not take the gateway with it: the
    // subscriber's own complaint about a failed write would be an `eprintln!`, which panics.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(writer);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    guard
}

/// The main thread's runtime: worker 0 and the background tasks (store connections, watchers,
/// signals). `Gateway::start` gives every other worker a thread and runtime of its own, so a
/// connection and its upstream connections stay on one thread (chosen by measurement, see
/// BENCHMARKS.md).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn print_generated(cfg: &Config, admin_is_new: bool) {
    // Printed once, to the terminal, never through the logger.
    if cfg.auth.admin_secret_generated && admin_is_new {
        if let Some(s) = cfg.auth.admin_secrets.first() {
            eprintln!(
                "development mode: generated admin secret (X-Admin-Secret): {}",
                s.expose()
            );
        }
    }
    if cfg.auth.jwt_secret_generated && cfg.store.backend == StoreBackend::Memory {
        // The key itself is never printed (CONTRACT.md section 3): only that there is one.
        eprintln!(
            "development mode: generated a JWT signing key for this process (not shown; set ARES_JWT_SECRET to keep sessions across restarts)"
        );
    }
}

fn serve(mut cfg: Config) -> ExitCode {
    let _log = init_tracing();
    let mut admin_is_new = true;
    if let StoreBackend::Embedded(opts) = &cfg.store.backend {
        let dir = opts.dir.clone();
        match ares_gateway::store::embedded::secrets::keep_generated(&mut cfg, &dir) {
            Ok(new) => admin_is_new = new,
            Err(e) => {
                eprintln!("cannot start: {e}");
                return ExitCode::from(1);
            }
        }
        if cfg.auth.admin_secret_generated && !admin_is_new {
            eprintln!(
                "development mode: the admin secret generated earlier is kept in {}",
                dir.join(ares_gateway::store::embedded::secrets::FILE_NAME)
                    .display()
            );
        }
    }
    if cfg.store.backend == StoreBackend::Memory {
        tracing::warn!("ARES_STORE=memory: nothing persists; every tenant, key, user, session and logout is lost when this process stops (ARES_STORE=embedded keeps them)");
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    print_generated(&cfg, admin_is_new);
    rt.block_on(async move {
        let listen = cfg.server.listen;
        match Gateway::start(cfg, accept::shutdown_signal()).await {
            Ok(g) => {
                tracing::info!(addr = %g.addr, "listening");
                let _ = g.task.await;
                if let Err(e) = g.state.store.shutdown().await {
                    tracing::error!(error = %e, "the last counts were not written");
                }
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cannot start on {listen}: {e}");
                ExitCode::from(1)
            }
        }
    })
}

fn demo_cmd() -> ExitCode {
    let _log = init_tracing();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        let upstream = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot bind the echo upstream: {e}");
                return ExitCode::from(1);
            }
        };
        let up_addr = upstream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tokio::spawn(demo::echo_upstream(upstream));
        let listen = std::env::var("ARES_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
        let env = |k: &str| -> Option<String> {
            match k {
                "ARES_UPSTREAM" => Some(format!("http://{up_addr}")),
                "ARES_STORE" => Some("memory".into()),
                "ARES_LISTEN" => Some(listen.clone()),
                "ARES_METRICS_LISTEN" => Some("off".into()),
                _ => std::env::var(k).ok(),
            }
        };
        let text = include_str!("../gateway.yaml");
        let mut cfg = match Config::from_yaml(text, &env) {
            Ok(c) => c,
            Err(problems) => {
                for p in problems {
                    eprintln!("{p}");
                }
                return ExitCode::from(1);
            }
        };
        // A taken port should not spoil a demo: fall back to any free one.
        if std::net::TcpListener::bind(cfg.server.listen).is_err() {
            cfg.server.listen = "127.0.0.1:0".parse().unwrap_or(cfg.server.listen);
        }
        let secret = cfg
            .auth
            .admin_secrets
            .first()
            .map(|s| s.expose().to_string())
            .unwrap_or_default();
        match Gateway::start(cfg, accept::shutdown_signal()).await {
            Ok(g) => {
                let up: std::net::SocketAddr = up_addr.parse().unwrap_or(g.addr);
                println!("{}", demo::walkthrough(g.addr, up, &secret));
                let _ = g.task.await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        }
    })
}
