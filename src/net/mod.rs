//! The bottom layer: the network pieces that know nothing of tenants, tokens or routes, used by
//! the layers above the way they use a library (by bytes, deadlines and certificates). Nothing
//! here imports anything above `util`.
//!
//! ```text
//! framing.rs   HTTP/1 framing scanner: smuggling shapes seen in the raw head
//! coalesce.rs  small vectored writes sent as one write (both sides of the proxy)
//! timer.rs     LazySleep / LazyTimer: deadlines moved per request without timer work
//! tls.rs       PEM -> rustls; certificate reload; client TLS for https upstreams
//! ```

pub mod coalesce;
pub mod framing;
pub mod timer;
pub mod tls;
