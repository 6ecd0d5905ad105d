//! The floor of the load benchmark: the least a hyper 1 reverse proxy does per request, built on
//! the gateway's own connection plumbing, with none of the gateway's work.
//!
//!     floor_proxy LISTEN UPSTREAM [WORKERS]      e.g. floor_proxy 127.0.0.1:8081 127.0.0.1:8080 2
//!
//! As in the gateway: one `SO_REUSEPORT` listener and one current-thread runtime per worker,
//! per client connection one upstream HTTP/1 connection polled in the client connection's task
//! (`conn_upstreams::drive`), small vectored writes sent as one (`coalesce`). Left out: authentication,
//! limits, header rewriting, framing checks, metrics, timeouts, HTTP/2 detection.
//! `bench/load.py` runs it beside the gateway: the CPU it spends per request is what the stack
//! costs before the gateway does any work of its own.

use std::net::SocketAddr;
use std::sync::Arc;

use ares_gateway::body::{self, Body};
use ares_gateway::net::coalesce::Coalesced;
use ares_gateway::proxy::conn_upstreams::{self, ConnUpstreams};
use ares_gateway::route::Upstream;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        return Err("usage: floor_proxy LISTEN UPSTREAM [WORKERS]".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let upstream = Arc::new(Upstream::parse(
        "floor",
        &format!("http://{upstream}"),
        ares_gateway::config::defaults::upstream_timeouts(),
    )?);
    let workers: usize = match args.get(3) {
        Some(n) => n.parse()?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let listeners = ares_gateway::bind_listeners(listen, workers)?;
    let addr = listeners.first().map(|l| l.local_addr()).transpose()?;
    let mut threads = Vec::new();
    for listener in listeners {
        let upstream = upstream.clone();
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(serve(listener, upstream))
                .map_err(|e| e.to_string())
        }));
    }
    if let Some(addr) = addr {
        eprintln!("floor_proxy listening on {addr}");
    }
    for t in threads {
        t.join().map_err(|_| "worker panicked")??;
    }
    Ok(())
}

async fn serve(listener: std::net::TcpListener, upstream: Arc<Upstream>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (upstreams, driver) = ConnUpstreams::new();
        let upstream = upstream.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let upstreams = upstreams.clone();
            let upstream = upstream.clone();
            async move {
                let req = req.map(|b| b.map_err(Into::into).boxed_unsync());
                Ok::<_, Error>(
                    match upstreams
                        .send(&upstream.authority, upstream.connect_timeout, req)
                        .await
                    {
                        Ok(resp) => resp.map(|b| b.map_err(Into::into).boxed_unsync()),
                        Err(_) => bad_gateway(),
                    },
                )
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(Coalesced(stream)), service);
        tokio::spawn(conn_upstreams::drive(conn, driver, None));
    }
}

fn bad_gateway() -> Response<Body> {
    let mut r = Response::new(body::empty());
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}
