//! The commands besides `serve` and `check` (which `main.rs` runs on the server layer): each a
//! user of the layers below, none used by them.
//!
//! ```text
//! demo.rs          `demo`: the echo upstream and the printed walkthrough
//! import_ares.rs   `import-ares`: ARES's PostgreSQL tables -> the store
//! transfer.rs      `export` / `import FILE`: any store <-> JSON lines (store/records.rs)
//! admin.rs         `admin ...`: the admin API of a running gateway from a terminal
//! ```

pub mod admin;
pub mod demo;
pub mod import_ares;
pub mod transfer;
