//! `ares-gateway admin ...`: the admin API of a running gateway from a terminal. Tables for
//! people, `--json` for scripts (the API's own JSON, one document per line). The secret comes
//! from `ARES_ADMIN_SECRET`, never from an argument (arguments are visible to every user of the
//! machine). Errors are one line on stderr.
//!
//! Exit codes: 0 done; 1 the gateway refused (a 4xx; its error code is printed); 2 a usage
//! error (clap's, or no secret); 3 the gateway could not be reached or failed (5xx).

use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The gateway's base URL.
    #[arg(long, env = "ARES_ADMIN_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// A PEM bundle to trust for an https:// URL (else the system roots).
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Tenants: list, create, show, suspend, activate, limits.
    #[command(subcommand)]
    Tenants(TenantCmd),
    /// API keys of a tenant: list, create, disable, enable, rotate, revoke.
    #[command(subcommand)]
    Keys(KeyCmd),
    /// Users: list, show, disable, enable, delete, logout.
    #[command(subcommand)]
    Users(UserCmd),
    /// The audit trail, oldest first.
    Audit {
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    List,
    Create {
        name: String,
        #[arg(long)]
        tier: Option<String>,
    },
    Show {
        id: String,
    },
    Suspend {
        id: String,
    },
    Activate {
        id: String,
    },
    /// Per-tenant overrides of its tier's limits (`none` clears one).
    Limits {
        id: String,
        #[arg(long)]
        per_minute: Option<String>,
        #[arg(long)]
        per_day: Option<String>,
        #[arg(long)]
        per_month: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    List {
        tenant: String,
    },
    Create {
        tenant: String,
        name: String,
        /// Comma-separated: full, chat, ingest.
        #[arg(long)]
        scopes: Option<String>,
        #[arg(long)]
        expires_in_days: Option<u64>,
    },
    Disable {
        tenant: String,
        key: String,
    },
    Enable {
        tenant: String,
        key: String,
    },
    /// A new key at once; the old one keeps working for `--grace-secs`.
    Rotate {
        tenant: String,
        key: String,
        #[arg(long, default_value_t = 0)]
        grace_secs: u64,
    },
    Revoke {
        tenant: String,
        key: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    List {
        /// An email prefix.
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    Show {
        id: String,
    },
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    Delete {
        id: String,
    },
    /// End every session of the user.
    Logout {
        id: String,
    },
}

/// What one command sends.
struct Call {
    method: http::Method,
    path: String,
    body: Option<Value>,
    /// How a person sees the answer.
    view: View,
}

#[derive(Clone, Copy)]
enum View {
    Tenants,
    Tenant,
    Keys,
    Key,
    NewKey,
    Users,
    User,
    Audit,
    Done,
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `limit=N` and each parameter that is set, encoded: the query of a paged admin listing.
fn page_query(limit: u32, params: &[(&str, &Option<String>)]) -> String {
    let mut q = format!("limit={limit}");
    for (name, value) in params {
        if let Some(v) = value {
            q.push_str(&format!("&{name}={}", enc(v)));
        }
    }
    q
}

fn limit_value(v: &Option<String>) -> Result<Option<Value>, String> {
    match v.as_deref() {
        None => Ok(None),
        Some("none") => Ok(Some(Value::Null)),
        Some(n) => n
            .parse::<u64>()
            .map(|n| Some(json!(n)))
            .map_err(|_| format!("{n:?} is not a number or `none`")),
    }
}

fn plan(cmd: &AdminCommand) -> Result<Call, String> {
    use http::Method;
    let call = |method: Method, path: String, body: Option<Value>, view: View| Call {
        method,
        path,
        body,
        view,
    };
    Ok(match cmd {
        AdminCommand::Tenants(t) => match t {
            TenantCmd::List => call(
                Method::GET,
                "/api/admin/tenants".into(),
                None,
                View::Tenants,
            ),
            TenantCmd::Create { name, tier } => call(
                Method::POST,
                "/api/admin/tenants".into(),
                Some(json!({"name": name, "tier": tier})),
                View::Tenant,
            ),
            TenantCmd::Show { id } => call(
                Method::GET,
                format!("/api/admin/tenants/{}", enc(id)),
                None,
                View::Tenant,
            ),
            TenantCmd::Suspend { id } | TenantCmd::Activate { id } => call(
                Method::PUT,
                format!("/api/admin/tenants/{}/status", enc(id)),
                Some(
                    json!({"status": if matches!(t, TenantCmd::Suspend { .. }) { "suspended" } else { "active" }}),
                ),
                View::Tenant,
            ),
            TenantCmd::Limits {
                id,
                per_minute,
                per_day,
                per_month,
            } => {
                let mut body = serde_json::Map::new();
                for (k, v) in [
                    ("requests_per_minute", per_minute),
                    ("requests_per_day", per_day),
                    ("requests_per_month", per_month),
                ] {
                    if let Some(v) = limit_value(v)? {
                        body.insert(k.into(), v);
                    }
                }
                call(
                    Method::PUT,
                    format!("/api/admin/tenants/{}/limits", enc(id)),
                    Some(Value::Object(body)),
                    View::Tenant,
                )
            }
        },
        AdminCommand::Keys(k) => {
            let key_path = |tenant: &str, key: &str| {
                format!("/api/admin/tenants/{}/api-keys/{}", enc(tenant), enc(key))
            };
            match k {
                KeyCmd::List { tenant } => call(
                    Method::GET,
                    format!("/api/admin/tenants/{}/api-keys", enc(tenant)),
                    None,
                    View::Keys,
                ),
                KeyCmd::Create {
                    tenant,
                    name,
                    scopes,
                    expires_in_days,
                } => {
                    let scopes: Option<Vec<&str>> = scopes
                        .as_deref()
                        .map(|s| s.split(',').map(str::trim).collect());
                    call(
                        Method::POST,
                        format!("/api/admin/tenants/{}/api-keys", enc(tenant)),
                        Some(
                            json!({"name": name, "scopes": scopes, "expires_in_days": expires_in_days}),
                        ),
                        View::NewKey,
                    )
                }
                KeyCmd::Disable { tenant, key } | KeyCmd::Enable { tenant, key } => call(
                    Method::PATCH,
                    key_path(tenant, key),
                    Some(json!({"is_active": matches!(k, KeyCmd::Enable { .. })})),
                    View::Key,
                ),
                KeyCmd::Rotate {
                    tenant,
                    key,
                    grace_secs,
                } => call(
                    Method::POST,
                    format!("{}/rotate", key_path(tenant, key)),
                    Some(json!({"grace_secs": grace_secs})),
                    View::NewKey,
                ),
                KeyCmd::Revoke { tenant, key } => {
                    call(Method::DELETE, key_path(tenant, key), None, View::Done)
                }
            }
        }
        AdminCommand::Users(u) => {
            let user_path = |id: &str| format!("/api/admin/users/{}", enc(id));
            match u {
                UserCmd::List {
                    email,
                    after,
                    limit,
                } => {
                    let q = page_query(*limit, &[("email", email), ("after", after)]);
                    call(
                        Method::GET,
                        format!("/api/admin/users?{q}"),
                        None,
                        View::Users,
                    )
                }
                UserCmd::Show { id } => call(Method::GET, user_path(id), None, View::User),
                UserCmd::Disable { id } | UserCmd::Enable { id } => call(
                    Method::PATCH,
                    user_path(id),
                    Some(json!({"disabled": matches!(u, UserCmd::Disable { .. })})),
                    View::User,
                ),
                UserCmd::Delete { id } => call(Method::DELETE, user_path(id), None, View::Done),
                UserCmd::Logout { id } => call(
                    Method::POST,
                    format!("{}/logout", user_path(id)),
                    None,
                    View::Done,
                ),
            }
        }
        AdminCommand::Audit {
            target,
            after,
            limit,
        } => {
            let q = page_query(*limit, &[("target", target), ("after", after)]);
            call(
                Method::GET,
                format!("/api/admin/audit?{q}"),
                None,
                View::Audit,
            )
        }
    })
}

/// Columns padded to their widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn rows(items: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    items
        .as_array()
        .map(|a| {
            a.iter()
                .map(|item| fields.iter().map(|f| text(&item[*f])).collect())
                .collect()
        })
        .unwrap_or_default()
}

const TENANT_FIELDS: &[&str] = &["id", "name", "tier", "status"];
const KEY_FIELDS: &[&str] = &[
    "id",
    "key_prefix",
    "name",
    "scopes",
    "is_active",
    "expires_at",
    "last_used_at",
];
const USER_FIELDS: &[&str] = &["id", "email", "name", "disabled"];
const AUDIT_FIELDS: &[&str] = &["id", "actor", "action", "target", "outcome"];

/// How a person reads an answer.
fn render(view: View, v: &Value) -> String {
    match view {
        View::Tenants => table(TENANT_FIELDS, &rows(v, TENANT_FIELDS)),
        View::Tenant => table(TENANT_FIELDS, &rows(&json!([v]), TENANT_FIELDS)),
        View::Keys => table(KEY_FIELDS, &rows(v, KEY_FIELDS)),
        View::Key => table(KEY_FIELDS, &rows(&json!([v]), KEY_FIELDS)),
        View::NewKey => {
            let mut out = table(KEY_FIELDS, &rows(&json!([v["api_key"]]), KEY_FIELDS));
            out.push_str(&format!(
                "\nraw key (shown once): {}\n",
                text(&v["raw_key"])
            ));
            if !v["previous"].is_null() {
                out.push_str(&format!(
                    "previous key {} works until {}\n",
                    text(&v["previous"]["id"]),
                    text(&v["previous"]["expires_at"])
                ));
            }
            out
        }
        View::Users => {
            let mut out = table(USER_FIELDS, &rows(&v["users"], USER_FIELDS));
            if let Some(next) = v["next"].as_str() {
                out.push_str(&format!("more: --after {next}\n"));
            }
            out
        }
        View::User => table(USER_FIELDS, &rows(&json!([v]), USER_FIELDS)),
        View::Audit => {
            let mut out = table(AUDIT_FIELDS, &rows(&v["entries"], AUDIT_FIELDS));
            if let Some(next) = v["next"].as_str() {
                out.push_str(&format!("more: --after {next}\n"));
            }
            out
        }
        View::Done => match v["message"].as_str() {
            Some(m) => format!("{m}\n"),
            None => "done\n".into(),
        },
    }
}

/// Run one admin command; returns the exit code.
pub async fn run(args: AdminArgs) -> u8 {
    let Some(secret) = std::env::var("ARES_ADMIN_SECRET")
        .ok()
        .and_then(|s| s.split(',').next().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
    else {
        eprintln!("error: ARES_ADMIN_SECRET is not set");
        return 2;
    };
    let call = match plan(&args.command) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match send(&args, &secret, &call).await {
        Ok((status, v)) if status.is_success() => {
            if args.json {
                println!("{v}");
            } else {
                print!("{}", render(call.view, &v));
            }
            0
        }
        Ok((status, v)) => {
            let code = v["code"].as_str().unwrap_or("-");
            let message = v["error"].as_str().unwrap_or("");
            if args.json {
                println!("{v}");
            }
            eprintln!("error: {} {code}: {message}", status.as_u16());
            if status.is_client_error() {
                1
            } else {
                3
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            3
        }
    }
}

async fn send(
    args: &AdminArgs,
    secret: &str,
    call: &Call,
) -> Result<(http::StatusCode, Value), String> {
    let base = args.url.trim_end_matches('/');
    let https = base.starts_with("https://");
    if !https && !base.starts_with("http://") {
        return Err(format!(
            "--url must start with http:// or https://, got {base:?}"
        ));
    }
    let tls = crate::net::tls::upstream_client_config(https, args.ca_file.as_deref())?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let body = call
        .body
        .as_ref()
        .map(|b| Bytes::from(b.to_string()))
        .unwrap_or_default();
    let mut req = http::Request::builder()
        .method(call.method.clone())
        .uri(format!("{base}{}", call.path))
        .header("x-admin-secret", secret);
    if call.body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| format!("{base}: no answer within 30 s"))?
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{base}: {e}"))?
        .to_bytes();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"error": "not JSON"}))
    };
    Ok((status, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_queries_encode_what_is_set_and_skip_the_rest() {
        let email = Some("a+b@x.io".to_string());
        let q = page_query(20, &[("email", &email), ("after", &None)]);
        assert_eq!(q, "limit=20&email=a%2Bb%40x.io");
        assert_eq!(page_query(5, &[]), "limit=5");
    }

    #[test]
    fn tables_pad_columns_and_never_print_hashes() {
        let v = json!([{"id": "ten_1", "name": "Acme", "tier": "dev", "status": "active"},
                       {"id": "ten_22", "name": "B", "tier": "enterprise", "status": "suspended"}]);
        let out = render(View::Tenants, &v);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "id      name  tier        status");
        assert_eq!(lines[2], "ten_22  B     enterprise  suspended");
    }

    #[test]
    fn limits_take_numbers_or_none() {
        assert_eq!(limit_value(&Some("5".into())).unwrap(), Some(json!(5)));
        assert_eq!(
            limit_value(&Some("none".into())).unwrap(),
            Some(Value::Null)
        );
        assert!(limit_value(&Some("five".into())).is_err());
    }
}
