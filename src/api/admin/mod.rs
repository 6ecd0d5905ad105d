//! The tenant and API-key admin API (`/api/admin/tenants*`, `/api/admin/provision-client`).
//!
//! The caller is already an admin principal. Every action writes one audit line (action,
//! tenant, key id, which admin secret by index, outcome) and never a secret or a raw key.
//! Changes invalidate this replica's caches at once.

mod keys;
mod users;

use std::collections::BTreeSet;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

use crate::api::{self, check_name, segments};
use crate::auth::{api_key, Identity, Principal};
use crate::body::{self, no_content, Body, RequestBody};
use crate::config::MAX_SLIDING_LIMIT;
use crate::error::{GatewayError, StoreError};
use crate::limiter::Scope;
use crate::ratelimit::Window;
use crate::state::{AppState, RequestScope, Snapshot};
use crate::store::{ApiKeyRecord, LimitOverrides, Tenant, TenantStatus};
use crate::util::now_ms;
use crate::util::{random_token, unix_now};

const KEY_WARNING: &str = "Store this API key securely: it will not be shown again.";

/// An API key as the admin API shows it: never the raw key, never its hash.
#[derive(Debug, Serialize)]
pub struct ApiKeyView<'a> {
    id: &'a str,
    tenant_id: &'a str,
    key_prefix: &'a str,
    name: &'a str,
    scopes: &'a [String],
    is_active: bool,
    created_at: u64,
    expires_at: Option<u64>,
    last_used_at: Option<u64>,
    /// The key's own limits, when it has any.
    #[serde(skip_serializing_if = "LimitOverrides::is_empty")]
    limits: &'a LimitOverrides,
}

impl<'a> From<&'a ApiKeyRecord> for ApiKeyView<'a> {
    fn from(k: &'a ApiKeyRecord) -> Self {
        ApiKeyView {
            id: &k.id,
            tenant_id: &k.tenant_id,
            key_prefix: &k.key_prefix,
            name: &k.name,
            scopes: &k.scopes,
            is_active: k.is_active,
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            limits: &k.limits,
        }
    }
}

#[derive(Deserialize)]
struct CreateTenant {
    name: String,
    tier: Option<String>,
}

#[derive(Deserialize)]
struct SetTier {
    tier: String,
}

#[derive(Deserialize)]
struct SetStatus {
    status: String,
}

/// `absent` keeps the tier's value, `null` clears an override, a number sets one.
#[derive(Deserialize)]
struct SetLimits {
    #[serde(default, deserialize_with = "present")]
    requests_per_minute: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    requests_per_day: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    requests_per_month: Option<Option<u64>>,
}

/// A field that may be `null`: present (`Some`), with a whole number or null. A number written
/// with a zero fraction (`60.0`, as JavaScript and JSON Schema allow) is that whole number.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    let n = Option::<serde_json::Number>::deserialize(d)?;
    n.map(|n| {
        whole(&n).ok_or_else(|| {
            D::Error::custom(format!(
                "expected a whole number from 0 to {MAX_WHOLE}, got {n}"
            ))
        })
    })
    .transpose()
    .map(Some)
}

/// An optional whole number (as [`present`], without telling `null` from absent).
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    present(d).map(Option::flatten)
}

/// The largest whole number a body may hold: 2^53 - 1, the largest every JSON parser reads
/// exactly (JavaScript's `Number.MAX_SAFE_INTEGER`).
const MAX_WHOLE: u64 = (1 << 53) - 1;

/// `n` as a `u64` when it is a whole number from 0 to [`MAX_WHOLE`] (`7`, `7.0`); `None` for
/// negatives, fractions and larger numbers.
fn whole(n: &serde_json::Number) -> Option<u64> {
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=MAX_WHOLE as f64).contains(f))
                .map(|f| f as u64)
        })
        .filter(|v| *v <= MAX_WHOLE)
}

#[derive(Deserialize)]
struct CreateKey {
    name: String,
    #[serde(default, deserialize_with = "number")]
    expires_in_days: Option<u64>,
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ImportKey {
    key_hash: String,
    key_prefix: String,
    name: String,
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Provision {
    name: String,
    tier: Option<String>,
    api_key_name: Option<String>,
    /// As ARES's own provisioning: the agents of ARES's templates for this product type are
    /// given to the tenant (a store on ARES's database; the others have no agents).
    product_type: Option<String>,
}

/// Whether the admin API implements `path` (with some method; a method it does not take is its
/// 405). Every other path under `/api/admin/` is the upstream's.
pub fn serves(path: &str) -> bool {
    allowed(path).is_some()
}

/// The methods the admin API takes on `path` (its 405's `Allow`), or `None` when it does not
/// serve it. `handle` below is the same table with the handlers.
fn allowed(path: &str) -> Option<&'static str> {
    Some(match segments(path, "/api/admin").as_slice() {
        ["provision-client"] => "POST",
        ["export"] | ["audit"] | ["users"] => "GET",
        ["tenants"] => "GET, POST",
        ["tenants", _] => "GET, DELETE",
        ["tenants", _, "quota" | "limits" | "status"] => "PUT",
        ["tenants", _, "usage"] => "GET",
        ["tenants", _, "api-keys"] => "GET, POST",
        // Key ids are `key_...`: `import` is never one.
        ["tenants", _, "api-keys", "import"] => "POST",
        ["tenants", _, "api-keys", _] => "PATCH, DELETE",
        ["tenants", _, "api-keys", _, "rotate"] => "POST",
        ["tenants", _, "api-keys", _, "usage"] => "GET",
        ["users", _] => "GET, PATCH, DELETE",
        ["users", _, "logout"] => "POST",
        _ => return None,
    })
}

pub async fn handle(
    s: &RequestScope<'_>,
    principal: &Principal,
    req: Request<RequestBody>,
    path: &str,
) -> Result<Response<Body>, GatewayError> {
    let RequestScope { state, snap, .. } = *s;
    let admin = match principal.identity() {
        Identity::Admin { secret_index } => *secret_index,
        _ => return Err(GatewayError::InvalidAdminSecret),
    };
    let method = req.method().clone();
    let limit = snap.config.server.json_body_limit;
    let seg = segments(path, "/api/admin");
    let a = Admin { state, snap, admin };
    let result = match (seg.as_slice(), &method) {
        (["provision-client"], &Method::POST) => {
            a.provision(api::json::read_request_json(req, limit).await?)
                .await
        }
        (["export"], &Method::GET) => a.export().await,
        (["audit"], &Method::GET) => a.list_audit(req.uri().query()).await,
        (["users"], &Method::GET) => a.list_users(req.uri().query()).await,
        (["users", id], &Method::GET) => a.get_user(id).await,
        (["users", id], &Method::PATCH) => {
            a.edit_user(id, api::json::read_request_json(req, limit).await?)
                .await
        }
        (["users", id], &Method::DELETE) => a.delete_user(id).await,
        (["users", id, "logout"], &Method::POST) => a.logout_user(id).await,
        (["tenants"], &Method::GET) => a.list_tenants().await,
        (["tenants"], &Method::POST) => {
            a.create_tenant(api::json::read_request_json(req, limit).await?)
                .await
        }
        (["tenants", id], &Method::GET) => a.get_tenant(id).await,
        (["tenants", id], &Method::DELETE) => a.delete_tenant(id).await,
        (["tenants", id, "quota"], &Method::PUT) => {
            a.set_tier(id, api::json::read_request_json(req, limit).await?)
                .await
        }
        (["tenants", id, "limits"], &Method::PUT) => {
            a.set_limits(id, api::json::read_request_json(req, limit).await?)
                .await
        }
        (["tenants", id, "status"], &Method::PUT) => {
            a.set_status(id, api::json::read_request_json(req, limit).await?)
                .await
        }
        (["tenants", id, "usage"], &Method::GET) => a.usage(id).await,
        (["tenants", id, "api-keys"], &Method::GET) => a.list_keys(id).await,
        (["tenants", id, "api-keys"], &Method::POST) => {
            a.create_key(id, api::json::read_request_json(req, limit).await?)
                .await
        }
        (["tenants", id, "api-keys", "import"], &Method::POST) => {
            a.import_key(id, api::json::read_request_json(req, limit).await?)
                .await
        }
        (["tenants", _, "api-keys", "import"], _) => Err(GatewayError::MethodNotAllowed("POST")),
        (["tenants", id, "api-keys", key_id], &Method::DELETE) => a.delete_key(id, key_id).await,
        (["tenants", id, "api-keys", key_id], &Method::PATCH) => {
            a.edit_key(id, key_id, api::json::read_request_json(req, limit).await?)
                .await
        }
        (["tenants", id, "api-keys", key_id, "usage"], &Method::GET) => {
            a.key_usage(id, key_id).await
        }
        (["tenants", id, "api-keys", key_id, "rotate"], &Method::POST) => {
            a.rotate_key(id, key_id, api::json::read_request_json(req, limit).await?)
                .await
        }
        _ => match allowed(path) {
            Some(allow) => Err(GatewayError::MethodNotAllowed(allow)),
            None => Err(GatewayError::NotFound),
        },
    };
    if let Err(e) = &result {
        tracing::info!(target: "audit", method = %method, path = %path, admin_secret = admin, outcome = e.code(), "admin action refused");
    }
    result
}

pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<CreateTenant>(data) {
        let _ = (check_name("name", &r.name), r.tier);
    }
    let _ = serde_json::from_slice::<SetTier>(data);
    let _ = serde_json::from_slice::<SetStatus>(data);
    let _ = serde_json::from_slice::<SetLimits>(data);
    if let Ok(r) = serde_json::from_slice::<CreateKey>(data) {
        let _ = (
            check_name("name", &r.name),
            r.expires_in_days,
            Admin::scopes(r.scopes),
        );
    }
    if let Ok(r) = serde_json::from_slice::<ImportKey>(data) {
        let _ = (
            r.key_hash.len(),
            r.key_prefix.len(),
            Admin::scopes(r.scopes),
            check_name("name", &r.name),
        );
    }
    if let Ok(r) = serde_json::from_slice::<Provision>(data) {
        let _ = (check_name("name", &r.name), r.tier, r.api_key_name);
    }
}

/// The query of a paged admin listing.
struct Page {
    /// The `next` of the previous page.
    after: Option<String>,
    /// The listing's one text filter (empty: none).
    filter: String,
    limit: usize,
}

/// Read `after`, `limit` (1 to `max`; `default` when absent) and the filter parameter named
/// `filter`; any other parameter is refused.
fn page_query(
    query: Option<&str>,
    filter: &str,
    default: usize,
    max: usize,
) -> Result<Page, GatewayError> {
    let mut page = Page {
        after: None,
        filter: String::new(),
        limit: default,
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "after" => page.after = Some(v.into_owned()),
            "limit" => {
                page.limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| GatewayError::invalid(format!("limit must be 1 to {max}")))?
            }
            name if name == filter => page.filter = v.into_owned(),
            _ => {
                return Err(GatewayError::invalid(format!(
                    "known parameters: {filter}, after, limit"
                )))
            }
        }
    }
    Ok(page)
}

struct Admin<'a> {
    state: &'a AppState,
    snap: &'a Snapshot,
    /// Index of the admin secret used, for the audit log.
    admin: usize,
}

impl Admin<'_> {
    async fn audit(&self, action: &str, tenant: &str, key: Option<&str>) {
        let target = match key {
            Some(k) => format!("api_key:{tenant}/{k}"),
            None => format!("tenant:{tenant}"),
        };
        self.record(action, &target).await;
    }

    /// One admin action into the audit trail, the actor named by the admin secret's index.
    async fn record(&self, action: &str, target: &str) {
        let actor = format!("admin:{}", self.admin);
        let keep = self.snap.config.store.audit_retention;
        crate::api::audit::record(self.state, keep, &actor, action, target, "ok").await;
    }

    /// `GET /api/admin/audit?after=<id>&target=<prefix>&limit=<n>`: oldest first.
    async fn list_audit(&self, query: Option<&str>) -> Result<Response<Body>, GatewayError> {
        let page = page_query(query, "target", 100, 1000)?;
        let (after, target, limit) = (page.after, page.filter, page.limit);
        let mut entries = self
            .state
            .records
            .call(
                self.state
                    .records
                    .list_audit(after.as_deref(), &target, limit + 1),
            )
            .await?;
        let more = entries.len() > limit;
        entries.truncate(limit);
        let next = more.then(|| entries.last().map(|e| e.id.clone())).flatten();
        Ok(body::json(
            StatusCode::OK,
            &json!({"entries": entries, "next": next}),
            false,
        ))
    }

    fn tier(&self, tier: Option<String>) -> Result<String, GatewayError> {
        let tier = tier.unwrap_or_else(|| self.snap.config.limits.default_plan.clone());
        if self.snap.config.limits.plans.contains_key(&tier) {
            Ok(tier)
        } else {
            let known: Vec<&str> = self
                .snap
                .config
                .limits
                .plans
                .keys()
                .map(String::as_str)
                .collect();
            Err(GatewayError::invalid(format!(
                "unknown tier (expected one of {})",
                known.join(", ")
            )))
        }
    }

    async fn tenant(&self, id: &str) -> Result<Tenant, GatewayError> {
        self.state
            .lookup
            .call(self.state.lookup.get_tenant(id))
            .await?
            .ok_or(GatewayError::NotFound)
    }

    async fn save(&self, t: &Tenant) -> Result<(), GatewayError> {
        self.state
            .records
            .call(self.state.records.put_tenant(t))
            .await?;
        self.state.keys.invalidate_tenant(&t.id);
        Ok(())
    }

    async fn new_tenant(&self, name: &str, tier: Option<String>) -> Result<Tenant, GatewayError> {
        let t = Tenant {
            id: random_token("ten_", 20),
            name: check_name("name", name)?,
            tier: self.tier(tier)?,
            status: TenantStatus::Active,
            created_at: unix_now(),
            limits: LimitOverrides::default(),
        };
        self.save(&t).await?;
        self.audit("tenant.create", &t.id, None).await;
        Ok(t)
    }

    async fn create_tenant(&self, req: CreateTenant) -> Result<Response<Body>, GatewayError> {
        let t = self.new_tenant(&req.name, req.tier).await?;
        Ok(body::json(StatusCode::CREATED, &t, false))
    }

    /// Every record as JSON lines, streamed: the online backup, on any store.
    async fn export(&self) -> Result<Response<Body>, GatewayError> {
        self.record("store.export", "store").await;
        let store = self.state.store.shared();
        let kind = store.kind();
        let (rx, task) = crate::store::records::stream(store, kind);
        Ok(Response::builder()
            .header(http::header::CONTENT_TYPE, "application/x-ndjson")
            .header(http::header::CACHE_CONTROL, "no-store")
            .body(body::json_lines(rx, task))
            .unwrap_or_else(|_| Response::new(body::full(""))))
    }

    async fn list_tenants(&self) -> Result<Response<Body>, GatewayError> {
        let all = self
            .state
            .records
            .call(self.state.records.list_tenants())
            .await?;
        Ok(body::json(StatusCode::OK, &all, false))
    }

    async fn get_tenant(&self, id: &str) -> Result<Response<Body>, GatewayError> {
        Ok(body::json(StatusCode::OK, &self.tenant(id).await?, false))
    }

    async fn delete_tenant(&self, id: &str) -> Result<Response<Body>, GatewayError> {
        let hashes = self
            .state
            .records
            .call(self.state.records.delete_tenant(id))
            .await?
            .ok_or(GatewayError::NotFound)?;
        self.state.keys.invalidate_tenant(id);
        for h in &hashes {
            self.state.keys.invalidate_key(h);
        }
        self.audit("tenant.delete", id, None).await;
        Ok(no_content())
    }

    async fn set_tier(&self, id: &str, req: SetTier) -> Result<Response<Body>, GatewayError> {
        let mut t = self.tenant(id).await?;
        t.tier = self.tier(Some(req.tier))?;
        self.save(&t).await?;
        self.audit("tenant.quota", id, None).await;
        Ok(body::json(StatusCode::OK, &t, false))
    }

    async fn set_limits(&self, id: &str, req: SetLimits) -> Result<Response<Body>, GatewayError> {
        let mut t = self.tenant(id).await?;
        if let Some(Some(n)) = req.requests_per_minute {
            if n > MAX_SLIDING_LIMIT {
                return Err(GatewayError::invalid(format!(
                    "requests_per_minute must be at most {MAX_SLIDING_LIMIT}"
                )));
            }
        }
        for (slot, value) in [
            (&mut t.limits.requests_per_minute, req.requests_per_minute),
            (&mut t.limits.requests_per_day, req.requests_per_day),
            (&mut t.limits.requests_per_month, req.requests_per_month),
        ] {
            if let Some(v) = value {
                *slot = v;
            }
        }
        self.save(&t).await?;
        self.audit("tenant.limits", id, None).await;
        Ok(body::json(StatusCode::OK, &t, false))
    }

    async fn set_status(&self, id: &str, req: SetStatus) -> Result<Response<Body>, GatewayError> {
        let status = match req.status.as_str() {
            "active" => TenantStatus::Active,
            "suspended" => TenantStatus::Suspended,
            _ => return Err(GatewayError::invalid("status must be active or suspended")),
        };
        let mut t = self.tenant(id).await?;
        t.status = status;
        self.save(&t).await?;
        self.audit("tenant.status", id, None).await;
        Ok(body::json(StatusCode::OK, &t, false))
    }

    async fn usage(&self, id: &str) -> Result<Response<Body>, GatewayError> {
        let t = self.tenant(id).await?;
        let now = now_ms();
        let s = &self.state;
        let usage = s
            .counters
            .call(s.counters.usage(&Scope::Tenant(id).key(), now))
            .await?;
        let tokens = s
            .counters
            .call(s.counters.tokens_used(&Scope::Tenant(id).key(), now))
            .await?;
        let tier = self
            .snap
            .config
            .limits
            .plans
            .get(&t.tier)
            .cloned()
            .unwrap_or_default();
        let plan = t.limits.apply(&tier);
        Ok(body::json(
            StatusCode::OK,
            &json!({
                "tenant_id": t.id,
                "tier": t.tier,
                "daily_requests": usage.day,
                "monthly_requests": usage.month,
                "monthly_tokens": tokens,
                "limits": {
                    "requests_per_minute": plan.get(Window::Minute),
                    "requests_per_day": plan.get(Window::Day),
                    "requests_per_month": plan.get(Window::Month),
                    "tokens_per_month": plan.tokens_per_month,
                },
            }),
            false,
        ))
    }

    async fn list_keys(&self, id: &str) -> Result<Response<Body>, GatewayError> {
        self.tenant(id).await?;
        let keys = self
            .state
            .records
            .call(self.state.records.list_api_keys(id))
            .await?;
        let views: Vec<ApiKeyView> = keys.iter().map(ApiKeyView::from).collect();
        Ok(body::json(StatusCode::OK, &views, false))
    }

    fn scopes(scopes: Option<Vec<String>>) -> Result<Vec<String>, GatewayError> {
        let Some(list) = scopes else {
            return Ok(vec!["full".into()]);
        };
        if list.is_empty() || list.len() > 16 {
            return Err(GatewayError::invalid("scopes must list 1 to 16 scopes"));
        }
        let mut set = BTreeSet::new();
        for s in list {
            let ok = !s.is_empty()
                && s.len() <= 32
                && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if !ok {
                return Err(GatewayError::invalid(
                    "scopes are lower-case words such as chat, ingest, full",
                ));
            }
            set.insert(s);
        }
        Ok(set.into_iter().collect())
    }

    async fn store_key(&self, record: ApiKeyRecord) -> Result<ApiKeyRecord, GatewayError> {
        match self
            .state
            .records
            .call_keep_error(self.state.records.create_api_key(&record))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(GatewayError::invalid("a key with this hash already exists"))
            }
            Err(e) => return Err(e.into()),
        }
        self.state.keys.invalidate_key(&record.key_hash);
        Ok(record)
    }

    async fn new_key(
        &self,
        tenant: &Tenant,
        name: &str,
        expires_in_days: Option<u64>,
        scopes: Option<Vec<String>>,
    ) -> Result<(ApiKeyRecord, String), GatewayError> {
        let name = check_name("name", name)?;
        let now = unix_now();
        let expires_at = match expires_in_days {
            None => None,
            Some(d @ 1..=3650) => Some(now + d * 86_400),
            Some(_) => {
                return Err(GatewayError::invalid(
                    "expires_in_days must be between 1 and 3650",
                ))
            }
        };
        let scopes = Self::scopes(scopes)?;
        let generated = api_key::generate();
        let record = ApiKeyRecord {
            id: random_token("key_", 20),
            tenant_id: tenant.id.clone(),
            key_hash: generated.hash,
            key_prefix: generated.prefix,
            name,
            scopes,
            is_active: true,
            created_at: now,
            expires_at,
            last_used_at: None,
            imported: false,
            limits: Default::default(),
        };
        let record = self.store_key(record).await?;
        self.audit("api_key.create", &tenant.id, Some(&record.id))
            .await;
        Ok((record, generated.raw))
    }

    async fn create_key(&self, id: &str, req: CreateKey) -> Result<Response<Body>, GatewayError> {
        let tenant = self.tenant(id).await?;
        let (record, raw) = self
            .new_key(&tenant, &req.name, req.expires_in_days, req.scopes)
            .await?;
        Ok(body::json(
            StatusCode::CREATED,
            &json!({"api_key": ApiKeyView::from(&record), "raw_key": raw, "warning": KEY_WARNING}),
            true,
        ))
    }

    async fn import_key(&self, id: &str, req: ImportKey) -> Result<Response<Body>, GatewayError> {
        let tenant = self.tenant(id).await?;
        let hash = req.key_hash.trim().to_ascii_lowercase();
        if !api_key::is_sha256_hex(&hash) {
            return Err(GatewayError::invalid(
                "key_hash must be 64 hex digits (SHA-256 of the key)",
            ));
        }
        let prefix = req.key_prefix.trim();
        if !api_key::is_display_prefix(prefix) {
            return Err(GatewayError::invalid(
                "key_prefix must be the key's first characters (ares_..., at most 13)",
            ));
        }
        let record = ApiKeyRecord {
            id: random_token("key_", 20),
            tenant_id: tenant.id.clone(),
            key_hash: hash,
            key_prefix: prefix.to_string(),
            name: check_name("name", &req.name)?,
            scopes: Self::scopes(req.scopes)?,
            is_active: true,
            created_at: unix_now(),
            expires_at: None,
            last_used_at: None,
            imported: true,
            limits: Default::default(),
        };
        let record = self.store_key(record).await?;
        self.audit("api_key.import", &tenant.id, Some(&record.id))
            .await;
        Ok(body::json(
            StatusCode::CREATED,
            &json!({"api_key": ApiKeyView::from(&record)}),
            false,
        ))
    }

    async fn delete_key(&self, id: &str, key_id: &str) -> Result<Response<Body>, GatewayError> {
        let record = self
            .state
            .records
            .call(self.state.records.delete_api_key(id, key_id))
            .await?
            .ok_or(GatewayError::NotFound)?;
        self.state.keys.invalidate_key(&record.key_hash);
        self.audit("api_key.revoke", id, Some(key_id)).await;
        Ok(no_content())
    }

    async fn provision(&self, req: Provision) -> Result<Response<Body>, GatewayError> {
        // Validate everything before writing anything.
        check_name("name", &req.name)?;
        let key_name = req.api_key_name.unwrap_or_else(|| "default".into());
        check_name("api_key_name", &key_name)?;
        self.tier(req.tier.clone())?;
        let product_type = match req.product_type.as_deref().map(str::trim) {
            None => None,
            Some(p) => Some(check_name("product_type", &p.to_lowercase())?),
        };
        let tenant = Arc::new(self.new_tenant(&req.name, req.tier).await?);
        let (record, raw) = self.new_key(&tenant, &key_name, None, None).await?;
        let mut answer = json!({
            "tenant_id": tenant.id,
            "tenant_name": tenant.name,
            "tier": tenant.tier,
            "api_key_id": record.id,
            "api_key_prefix": record.key_prefix,
            "raw_api_key": raw,
        });
        if let Some(product_type) = product_type {
            let records = &self.state.records;
            let agents = records
                .call(records.clone_agent_templates(&tenant.id, &product_type))
                .await?;
            answer["product_type"] = json!(product_type);
            answer["agents_created"] = json!(agents);
        }
        Ok(body::json(StatusCode::CREATED, &answer, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_may_be_written_as_floats_up_to_two_to_the_53() {
        let n = |t: &str| whole(&serde_json::from_str::<serde_json::Number>(t).unwrap());
        assert_eq!(n("60"), Some(60));
        assert_eq!(n("60.0"), Some(60));
        assert_eq!(n("0"), Some(0));
        assert_eq!(n("9007199254740991"), Some(MAX_WHOLE));
        assert_eq!(n("9007199254740992"), None);
        assert_eq!(n("1e300"), None);
        assert_eq!(n("-1"), None);
        assert_eq!(n("2.5"), None);
    }
}
