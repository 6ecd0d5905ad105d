//! The audit trail: every admin action and the security events (an account locked by failed
//! logins, a wrong current password) are a log line (`target: "audit"`) and an entry in the
//! store, kept `store.audit_retention_days`, paged through by `GET /api/admin/audit`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::state::AppState;
use crate::store::AuditEntry;
use crate::util::now_ms;

/// Tells apart entries of one millisecond (and, with the time, orders them).
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Record one event. The action has happened already: a store that cannot take the entry is
/// logged, never the caller's error.
pub async fn record(
    state: &AppState,
    keep: std::time::Duration,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
) {
    tracing::info!(target: "audit", actor, action, subject = target, outcome, "audit");
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 1_000_000;
    let entry = AuditEntry::new(now_ms(), seq, actor, action, target, outcome);
    let keep_ms = keep.as_millis() as u64;
    if let Err(e) = state
        .records
        .call(state.records.append_audit(&entry, keep_ms))
        .await
    {
        tracing::error!(error = %e, action, "audit entry not stored (it is in the log)");
    }
}
