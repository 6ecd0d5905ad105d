//! Connection machinery: everything between a socket and a request, knowing nothing of tenants,
//! tokens or routes.
//!
//! ```text
//! accept.rs    accept loop, connection permit, worker balance (hand-over), TLS handshake,
//!              hyper-util auto builder, drain; the only file here that calls the pipeline
//! bound.rs     a client connection's own upstream connections, driven in its task
//! framing.rs   HTTP/1 framing scanner: smuggling shapes seen in the raw head
//! coalesce.rs  small vectored writes sent as one write (both sides of the proxy)
//! timer.rs     LazySleep / LazyTimer: deadlines moved per request without timer-wheel work
//! tls.rs       PEM -> rustls; certificate reload; client TLS for https upstreams
//! ```
//!
//! Everything but `accept.rs` is a leaf: the domain modules use `bound`, `tls` and `timer` the
//! way they use a library, and none of them imports anything above `util` and `body`.

pub mod accept;
pub mod bound;
pub mod coalesce;
pub mod framing;
pub mod timer;
pub mod tls;
