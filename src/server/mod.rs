//! The top layer: starting the gateway and running its connections. Nothing calls into it; it
//! calls the pipeline.
//!
//! ```text
//! gateway.rs   Gateway::start: store, shared state, listeners, workers, reload, housekeeping
//! accept.rs    accept loop, connection permit, worker balance (hand-over), TLS handshake,
//!              hyper-util auto builder, drain; hands each request to `pipeline::handle`
//! ```

pub mod accept;
pub mod gateway;

pub use gateway::Gateway;
