//! The `demo` command: a gateway with everything embedded (memory store, generated secrets, a
//! built-in echo upstream on a free loopback port) and a copy-paste walkthrough.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::{self, Body};

/// Serve an echo upstream on `listener`: each request is answered with a JSON description of
/// what arrived (method, path, query, the identity headers, the body).
pub async fn echo_upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc =
                service_fn(
                    |req: Request<Incoming>| async move { Ok::<_, Infallible>(echo(req).await) },
                );
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, incoming) = req.into_parts();
    let bytes = incoming
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_else(|_| Bytes::new());
    let mut headers = serde_json::Map::new();
    for (k, v) in &parts.headers {
        let name = k.as_str();
        if name.starts_with("x-") && name != "x-admin-secret" {
            headers.insert(name.to_string(), json!(v.to_str().unwrap_or("")));
        }
    }
    let body_json: serde_json::Value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    body::json(
        StatusCode::OK,
        &json!({
            "echo": true,
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "headers": headers,
            "body": body_json,
        }),
        false,
    )
}

/// The walkthrough printed by `demo`.
pub fn walkthrough(gateway: SocketAddr, upstream: SocketAddr, admin_secret: &str) -> String {
    let g = format!("http://{gateway}");
    format!(
        r#"ares-gateway demo
  gateway   {g}
  upstream  http://{upstream}  (built-in echo: answers with what it received)
  store     memory (lost on exit)
  admin secret (generated for this run): {admin_secret}

# 1. Provision a tenant and its first API key (the raw key is shown once):
curl -s -X POST {g}/api/admin/provision-client \
  -H "X-Admin-Secret: {admin_secret}" -H "Content-Type: application/json" \
  -d '{{"name":"Acme","tier":"dev","api_key_name":"backend"}}'

# 2. Call /v1/chat with that key (the echo shows X-Tenant-Id, X-Auth-Method: api_key, path /api/chat):
KEY=ares_...   # raw_api_key from step 1
curl -s -X POST {g}/v1/chat -H "Authorization: Bearer $KEY" \
  -H "Content-Type: application/json" -d '{{"message":"Hello","agent_type":"product"}}'

# 3. Register a user, log in, and call /api/chat with the access token:
curl -s -X POST {g}/api/auth/register -H "Content-Type: application/json" \
  -d '{{"email":"developer@example.com","password":"your-secure-password","name":"Jane Developer"}}'
curl -s -X POST {g}/api/auth/login -H "Content-Type: application/json" \
  -d '{{"email":"developer@example.com","password":"your-secure-password"}}'
TOKEN=eyJ...   # access_token from the login
curl -s -X POST {g}/api/chat -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" -d '{{"message":"Hello","agent_type":"product"}}'

# 4. Refresh, then log out (the refresh token and the access token both stop working):
curl -s -X POST {g}/api/auth/refresh -H "Content-Type: application/json" -d '{{"refresh_token":"rt_..."}}'
curl -s -X POST {g}/api/auth/logout -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" -d '{{"refresh_token":"rt_..."}}'

Press Ctrl-C to stop.
"#
    )
}
