//! `ares-gateway export` and `ares-gateway import FILE`: every record of the configured store as
//! JSON lines, and such lines loaded into the configured store (idempotent: a record replaces
//! the one with its id).

use std::io::{BufRead, Write};

use crate::store::records::{self, Loaded, Record};
use crate::store::Store;

/// Write `store`'s records to `out`, one JSON line each, the header first; returns the count.
pub async fn export(store: std::sync::Arc<dyn Store>, out: &mut dyn Write) -> Result<u64, String> {
    let kind = store.kind();
    let (mut rx, task) = records::stream(store, kind);
    let mut n = 0u64;
    let mut failed = None;
    while let Some(r) = rx.recv().await {
        let written = serde_json::to_writer(&mut *out, &r)
            .map_err(|e| e.to_string())
            .and_then(|()| out.write_all(b"\n").map_err(|e| e.to_string()));
        if let Err(e) = written {
            failed = Some(format!("cannot write the export: {e}"));
            break;
        }
        n += 1;
    }
    drop(rx);
    if let Some(e) = failed {
        return Err(e);
    }
    out.flush()
        .map_err(|e| format!("cannot write the export: {e}"))?;
    match task.await {
        Ok(Ok(())) => Ok(n.saturating_sub(1)),
        Ok(Err(e)) => Err(format!("export stopped: {e}")),
        Err(e) => Err(format!("export stopped: {e}")),
    }
}

/// What `import` did, per record type.
#[derive(Debug, Default)]
pub struct Report {
    pub stored: std::collections::BTreeMap<&'static str, u64>,
    /// `line N: reason` for records not written (expired, conflicting).
    pub skipped: Vec<String>,
    /// `line N: reason` for lines that are not records.
    pub bad: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (kind, n) in &self.stored {
            writeln!(f, "{kind}: {n} stored")?;
        }
        for s in &self.skipped {
            writeln!(f, "skipped {s}")?;
        }
        for b in &self.bad {
            writeln!(f, "not a record: {b}")?;
        }
        Ok(())
    }
}

/// Load every line of `input` into `store`. A line that is not a record is reported and the
/// rest still load; a store failure stops the import (run it again: it is idempotent).
pub async fn import(store: &dyn Store, input: &mut dyn BufRead) -> Result<Report, String> {
    store.bulk_load(true).await.map_err(|e| e.to_string())?;
    let loaded = import_lines(store, input).await;
    // Durable before the command reports anything, success or not.
    let synced = store.bulk_load(false).await.map_err(|e| e.to_string());
    let report = loaded?;
    synced?;
    Ok(report)
}

async fn import_lines(store: &dyn Store, input: &mut dyn BufRead) -> Result<Report, String> {
    let mut report = Report::default();
    let mut line = String::new();
    let mut n = 0u64;
    loop {
        line.clear();
        n += 1;
        match input.read_line(&mut line) {
            Ok(0) => return Ok(report),
            Ok(_) => {}
            Err(e) => return Err(format!("line {n}: cannot read: {e}")),
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let record: Record = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                // The error names the position and the field, never the line's content.
                report.bad.push(format!("line {n}: {e}"));
                continue;
            }
        };
        match records::load(store, &record).await {
            Ok(Loaded::Stored) => *report.stored.entry(record.kind()).or_default() += 1,
            Ok(Loaded::Skipped(why)) => report.skipped.push(format!("line {n}: {why}")),
            Err(e) => return Err(format!("line {n}: {e}")),
        }
    }
}
