//! Connection machinery: everything between a socket and a request, knowing nothing of tenants,
//! tokens or routes.
//!
//! ```text
//! accept.rs          accept loop, connection permit, worker balance (hand-over), TLS
//!                    handshake, hyper-util auto builder, drain; the only file here that
//!                    calls the pipeline
//! conn_upstreams.rs  a client connection's own upstream connections, driven in its task
//! framing.rs         HTTP/1 framing scanner: smuggling shapes seen in the raw head
//! coalesce.rs        small vectored writes sent as one write (both sides of the proxy)
//! timer.rs           LazySleep / LazyTimer: deadlines moved per request without timer work
//! tls.rs             PEM -> rustls; certificate reload; client TLS for https upstreams
//! ```
//!
//! Everything but `accept.rs` is a leaf that knows nothing of tenants, tokens or routes: the
//! pipeline and the proxy use `conn_upstreams`, `framing`, `tls` and `timer` the way they use a
//! library (by authority, timeout and bytes), and none of those imports anything above `util`
//! and `body`.

pub mod accept;
pub mod coalesce;
pub mod conn_upstreams;
pub mod framing;
pub mod timer;
pub mod tls;
