//! An API key's lifecycle after it is created: edit (name, scopes, expiry), disable and enable
//! without deleting, and rotate with an overlap (the new key works at once, the old one until
//! its grace ends, then is refused everywhere).

use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{present, Admin, ApiKeyView, KEY_WARNING};
use crate::api::check_name;
use crate::body::{self, Body};
use crate::config::MAX_SLIDING_LIMIT;
use crate::error::GatewayError;
use crate::store::ApiKeyRecord;
use crate::util::unix_now;

/// The longest overlap a rotation may keep the old key alive.
pub const MAX_GRACE_SECS: u64 = 30 * 86_400;

/// `PATCH .../api-keys/{key_id}`: what is absent stays as it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EditKey {
    name: Option<String>,
    scopes: Option<Vec<String>>,
    is_active: Option<bool>,
    /// Unix seconds; `null` removes the expiry.
    #[serde(default, deserialize_with = "present")]
    expires_at: Option<Option<u64>>,
    /// The key's own limits on top of its tenant's; `null` removes one.
    #[serde(default, deserialize_with = "present")]
    requests_per_minute: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    requests_per_day: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    requests_per_month: Option<Option<u64>>,
}

/// `POST .../api-keys/{key_id}/rotate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateKey {
    /// How long the old key keeps working (0: refused at once).
    #[serde(default)]
    grace_secs: u64,
}

/// Days a key's usage answer covers, today included.
const USAGE_DAYS: u64 = 30;

impl Admin<'_> {
    /// `GET .../api-keys/{key_id}/usage`: requests per day for the last 30 days (UTC; the last
    /// few seconds' requests are written with the next batch).
    pub(super) async fn key_usage(
        &self,
        tenant_id: &str,
        key_id: &str,
    ) -> Result<Response<Body>, GatewayError> {
        let key = self.key_of(tenant_id, key_id).await?;
        let today = unix_now() / 86_400;
        let from = today + 1 - USAGE_DAYS;
        let counts: std::collections::HashMap<u64, u64> = self
            .state
            .records
            .call(self.state.records.key_usage(&key.key_hash, from))
            .await?
            .into_iter()
            .collect();
        let days: Vec<serde_json::Value> = (from..=today)
            .map(|d| {
                json!({
                    "date": crate::ratelimit::date(d),
                    "requests": counts.get(&d).copied().unwrap_or(0),
                })
            })
            .collect();
        Ok(body::json(
            StatusCode::OK,
            &json!({"key_id": key.id, "last_used_at": key.last_used_at, "days": days}),
            false,
        ))
    }

    async fn key_of(&self, tenant_id: &str, key_id: &str) -> Result<ApiKeyRecord, GatewayError> {
        self.tenant(tenant_id).await?;
        let keys = self
            .state
            .records
            .call(self.state.records.list_api_keys(tenant_id))
            .await?;
        keys.into_iter()
            .find(|k| k.id == key_id)
            .ok_or(GatewayError::NotFound)
    }

    /// Store a changed record and drop every cached copy (this replica now; the others are
    /// told through the store).
    async fn save_key(&self, key: &ApiKeyRecord) -> Result<(), GatewayError> {
        let found = self
            .state
            .records
            .call(self.state.records.update_api_key(key))
            .await?;
        self.state.keys.invalidate_key(&key.key_hash);
        if found {
            Ok(())
        } else {
            Err(GatewayError::NotFound)
        }
    }

    pub(super) async fn edit_key(
        &self,
        tenant_id: &str,
        key_id: &str,
        req: EditKey,
    ) -> Result<Response<Body>, GatewayError> {
        let mut key = self.key_of(tenant_id, key_id).await?;
        if let Some(name) = req.name {
            key.name = check_name("name", &name)?;
        }
        if let Some(scopes) = req.scopes {
            key.scopes = Self::scopes(Some(scopes))?;
        }
        if let Some(expires_at) = req.expires_at {
            if expires_at.is_some_and(|at| at <= unix_now()) {
                return Err(GatewayError::invalid(
                    "expires_at must be in the future (disable the key instead)",
                ));
            }
            key.expires_at = expires_at;
        }
        for (slot, value, max) in [
            (
                &mut key.limits.requests_per_minute,
                req.requests_per_minute,
                MAX_SLIDING_LIMIT,
            ),
            (
                &mut key.limits.requests_per_day,
                req.requests_per_day,
                u64::MAX,
            ),
            (
                &mut key.limits.requests_per_month,
                req.requests_per_month,
                u64::MAX,
            ),
        ] {
            if let Some(v) = value {
                if v.is_some_and(|n| n == 0 || n > max) {
                    return Err(GatewayError::invalid(format!(
                        "a key limit must be at least 1 (requests_per_minute at most {MAX_SLIDING_LIMIT})"
                    )));
                }
                *slot = v;
            }
        }
        let action = match req.is_active {
            Some(false) if key.is_active => "api_key.disable",
            Some(true) if !key.is_active => "api_key.enable",
            _ => "api_key.edit",
        };
        if let Some(active) = req.is_active {
            key.is_active = active;
        }
        self.save_key(&key).await?;
        self.audit(action, tenant_id, Some(key_id)).await;
        Ok(body::json(StatusCode::OK, &ApiKeyView::from(&key), false))
    }

    pub(super) async fn rotate_key(
        &self,
        tenant_id: &str,
        key_id: &str,
        req: RotateKey,
    ) -> Result<Response<Body>, GatewayError> {
        if req.grace_secs > MAX_GRACE_SECS {
            return Err(GatewayError::invalid(
                "grace_secs must be at most 2592000 (30 days)",
            ));
        }
        let mut old = self.key_of(tenant_id, key_id).await?;
        if !old.is_active {
            return Err(GatewayError::invalid(
                "the key is disabled; enable it or create a new one",
            ));
        }
        let tenant = self.tenant(tenant_id).await?;
        let (mut new, raw) = self
            .new_key(&tenant, &old.name, None, Some(old.scopes.clone()))
            .await?;
        // The new key expires when the old one would have, with the same limits.
        if old.expires_at.is_some() || !old.limits.is_empty() {
            new.expires_at = old.expires_at;
            new.limits = old.limits.clone();
            self.save_key(&new).await?;
        }
        let now = unix_now();
        if req.grace_secs == 0 {
            old.is_active = false;
        } else {
            let end = now + req.grace_secs;
            old.expires_at = Some(old.expires_at.map_or(end, |at| at.min(end)));
        }
        self.save_key(&old).await?;
        self.audit("api_key.rotate", tenant_id, Some(key_id)).await;
        Ok(body::json(
            StatusCode::CREATED,
            &json!({
                "api_key": ApiKeyView::from(&new),
                "raw_key": raw,
                "warning": KEY_WARNING,
                "previous": ApiKeyView::from(&old),
            }),
            true,
        ))
    }
}
