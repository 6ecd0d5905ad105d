//! The tenant and API-key admin API, and every API-key refusal, through the pipeline (no socket).

use sha2::Digest;

use crate::common::*;

#[tokio::test]
async fn admin_secret_is_required_and_every_configured_one_works() {
    let up = Upstream::start().await;
    let g = pipeline(
        &up.url(),
        &[(
            "ARES_ADMIN_SECRET",
            "old-admin-secret-000001,new-admin-secret-000002",
        )],
    )
    .await;
    let r = get(&g.url("/api/admin/tenants"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_MISSING_CREDENTIALS")
    );
    assert!(r.header("www-authenticate").is_none());
    let r = get(
        &g.url("/api/admin/tenants"),
        &[("x-admin-secret", "old-admin-secret-00000")],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_ADMIN_SECRET")
    );
    for s in ["old-admin-secret-000001", "new-admin-secret-000002"] {
        let r = get(&g.url("/api/admin/tenants"), &[("x-admin-secret", s)]).await;
        assert_eq!(r.status, 200);
        assert!(
            r.json().is_array(),
            "GET /api/admin/tenants is a bare array"
        );
    }
    // The upstream admin routes need it too.
    let r = get(
        &g.url("/api/admin/agents"),
        &[("authorization", "Bearer x")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn tenant_endpoints_have_the_contract_shapes() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let r = post(
        &g.url("/api/admin/tenants"),
        &admin(),
        r#"{"name":"Acme","tier":"pro"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let t = r.json();
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["name"], "Acme");
    assert_eq!(t["tier"], "pro");
    assert_eq!(t["status"], "active");
    assert!(t["created_at"].as_u64().unwrap() > 1_700_000_000);

    let r = get(&g.url(&format!("/api/admin/tenants/{id}")), &admin()).await;
    assert_eq!(r.json()["id"], id.as_str());
    let all = get(&g.url("/api/admin/tenants"), &admin()).await.json();
    assert_eq!(all.as_array().unwrap().len(), 1);

    let r = send(
        "PUT",
        &g.url(&format!("/api/admin/tenants/{id}/quota")),
        &admin(),
        Some(r#"{"tier":"dev"}"#),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.json()["tier"].as_str()),
        (200, Some("dev"))
    );
    let r = send(
        "PUT",
        &g.url(&format!("/api/admin/tenants/{id}/quota")),
        &admin(),
        Some(r#"{"tier":"platinum"}"#),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (400, "INVALID_INPUT")
    );
    assert!(r.json()["error"].as_str().unwrap().contains("tier"));

    let r = send(
        "PUT",
        &g.url(&format!("/api/admin/tenants/{id}/limits")),
        &admin(),
        Some(r#"{"requests_per_minute":5,"requests_per_day":null}"#),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["limits"]["requests_per_minute"], 5);

    let r = send(
        "PUT",
        &g.url(&format!("/api/admin/tenants/{id}/status")),
        &admin(),
        Some(r#"{"status":"suspended"}"#),
    )
    .await;
    assert_eq!(r.json()["status"], "suspended");
    let r = send(
        "PUT",
        &g.url(&format!("/api/admin/tenants/{id}/status")),
        &admin(),
        Some(r#"{"status":"gone"}"#),
    )
    .await;
    assert_eq!(r.status, 400);

    let usage = get(&g.url(&format!("/api/admin/tenants/{id}/usage")), &admin())
        .await
        .json();
    assert_eq!(usage["daily_requests"], 0);
    assert_eq!(usage["monthly_requests"], 0);
    assert_eq!(usage["limits"]["requests_per_minute"], 5);
    assert_eq!(usage["limits"]["requests_per_day"], 2000);

    for (m, p) in [
        ("GET", "/api/admin/tenants/nope"),
        ("DELETE", "/api/admin/tenants/nope"),
        ("GET", "/api/admin/tenants/nope/api-keys"),
    ] {
        let r = send(m, &g.url(p), &admin(), None).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (404, "NOT_FOUND"),
            "{m} {p}"
        );
    }
    let r = send("PATCH", &g.url("/api/admin/tenants"), &admin(), None).await;
    assert_eq!(r.status, 405);
    let r = post(&g.url("/api/admin/tenants"), &admin(), r#"{"tier":"pro"}"#).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("name"));

    let r = send(
        "DELETE",
        &g.url(&format!("/api/admin/tenants/{id}")),
        &admin(),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        get(&g.url(&format!("/api/admin/tenants/{id}")), &admin())
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn key_lifecycle_scopes_revocation_and_suspension() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let (tenant, _, _) = provision(&g, "dev").await;
    let r = post(
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys")),
        &admin(),
        r#"{"name":"ingest-only","scopes":["ingest"],"expires_in_days":30}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    let raw = v["raw_key"].as_str().unwrap().to_string();
    assert!(raw.starts_with("ares_") && raw.len() >= 48);
    assert!(v["warning"].is_string());
    let k = &v["api_key"];
    assert_eq!(k["key_prefix"], &raw[..13]);
    assert_eq!(k["scopes"], serde_json::json!(["ingest"]));
    assert_eq!(k["is_active"], true);
    assert_eq!(k["tenant_id"], tenant.as_str());
    assert!(k["expires_at"].as_u64().unwrap() > k["created_at"].as_u64().unwrap() + 29 * 86_400);
    let key_id = k["id"].as_str().unwrap().to_string();

    // Scope: ingest key on a chat route is 403, on the ingest route it passes.
    let auth = bearer(&raw);
    let r = post(&g.url("/v1/chat"), &[("authorization", &auth)], "{}").await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (403, "AUTH_FORBIDDEN")
    );
    let r = post(
        &g.url("/v1/usage/events"),
        &[("authorization", &auth)],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().uri, "/api/v1/usage/events");

    // The listing never shows a raw key or a hash.
    let list = get(
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys")),
        &admin(),
    )
    .await;
    let text = String::from_utf8_lossy(&list.body).to_string();
    assert_eq!(list.json().as_array().unwrap().len(), 2);
    assert!(!text.contains(&raw));
    assert!(!text.contains(&ares_gateway::auth::api_key::hash(&raw)));
    assert!(!text.contains("key_hash"));

    // Suspension is 403, reactivation restores.
    send(
        "PUT",
        &g.url(&format!("/api/admin/tenants/{tenant}/status")),
        &admin(),
        Some(r#"{"status":"suspended"}"#),
    )
    .await;
    let r = post(
        &g.url("/v1/usage/events"),
        &[("authorization", &auth)],
        "{}",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (403, "AUTH_TENANT_SUSPENDED")
    );
    send(
        "PUT",
        &g.url(&format!("/api/admin/tenants/{tenant}/status")),
        &admin(),
        Some(r#"{"status":"active"}"#),
    )
    .await;
    assert_eq!(
        post(
            &g.url("/v1/usage/events"),
            &[("authorization", &auth)],
            "{}"
        )
        .await
        .status,
        200
    );

    // Revocation takes effect at once on this replica.
    let r = send(
        "DELETE",
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys/{key_id}")),
        &admin(),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    let r = post(
        &g.url("/v1/usage/events"),
        &[("authorization", &auth)],
        "{}",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_API_KEY")
    );
    let r = send(
        "DELETE",
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys/{key_id}")),
        &admin(),
        None,
    )
    .await;
    assert_eq!(r.status, 404);

    // Bad inputs name the field.
    for (body, field) in [
        (r#"{"name":"x","expires_in_days":0}"#, "expires_in_days"),
        (r#"{"name":"x","expires_in_days":4000}"#, "expires_in_days"),
        (r#"{"name":"x","scopes":["Bad Scope"]}"#, "scopes"),
        (r#"{"name":""}"#, "name"),
    ] {
        let r = post(
            &g.url(&format!("/api/admin/tenants/{tenant}/api-keys")),
            &admin(),
            body,
        )
        .await;
        assert_eq!(r.status, 400, "{body}");
        assert!(
            r.json()["error"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
}

#[tokio::test]
async fn deleted_tenants_keys_stop_working_and_keys_are_refused_on_the_wrong_route() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let (tenant, _, key) = provision(&g, "free").await;
    let auth = bearer(&key);
    assert_eq!(
        get(&g.url("/v1/models"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    // An API key on a JWT route, and a JWT on a key route, are 401.
    let r = get(&g.url("/api/chat"), &[("authorization", &auth)]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_TOKEN")
    );
    let tokens = login(&g, "wrongroute@example.com").await;
    let r = get(
        &g.url("/v1/models"),
        &[(
            "authorization",
            &bearer(tokens["access_token"].as_str().unwrap()),
        )],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_API_KEY")
    );

    // Typos fail the checksum; random keys are refused; the scheme word is case-insensitive.
    let mut typo = key.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    let r = get(
        &g.url("/v1/models"),
        &[("authorization", &bearer(&String::from_utf8(typo).unwrap()))],
    )
    .await;
    assert_eq!(r.error_code(), "AUTH_INVALID_API_KEY");
    let r = get(
        &g.url("/v1/models"),
        &[("authorization", "Bearer ares_k7Gx9mPqR2vLwN4s")],
    )
    .await;
    assert_eq!(r.error_code(), "AUTH_INVALID_API_KEY");
    assert_eq!(
        get(
            &g.url("/v1/models"),
            &[("authorization", &format!("bearer {key}"))]
        )
        .await
        .status,
        200
    );
    let r = get(&g.url("/v1/models"), &[]).await;
    assert_eq!(r.error_code(), "AUTH_MISSING_CREDENTIALS");

    send(
        "DELETE",
        &g.url(&format!("/api/admin/tenants/{tenant}")),
        &admin(),
        None,
    )
    .await;
    let r = get(&g.url("/v1/models"), &[("authorization", &auth)]).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (401, "AUTH_INVALID_API_KEY")
    );
}

#[tokio::test]
async fn imported_ares_keys_keep_working() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let (tenant, _, _) = provision(&g, "dev").await;
    // ARES issues `ares_` + 64 hex and stores the SHA-256 hex of the 64 hex (without `ares_`):
    // that stored hash is what an operator imports.
    let legacy = format!("ares_{}", "0123456789abcdef".repeat(4));
    let ares_hash: String = sha2::Sha256::digest(&legacy.as_bytes()[5..])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let r = post(
        &g.url("/v1/models"),
        &[("authorization", &bearer(&legacy))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 401, "unknown before import");
    let body = serde_json::json!({
        "key_hash": ares_hash,
        "key_prefix": &legacy[..13],
        "name": "migrated"
    });
    let r = post(
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys/import")),
        &admin(),
        &body.to_string(),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.json()["api_key"]["key_prefix"], &legacy[..13]);
    // The negative cache from the first attempt does not outlive the import.
    let r = post(
        &g.url("/v1/models"),
        &[("authorization", &bearer(&legacy))],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-tenant-id"], tenant.as_str());
    let r = post(
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys/import")),
        &admin(),
        &body.to_string(),
    )
    .await;
    assert_eq!(r.status, 400, "duplicate hash");
    let r = post(
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys/import")),
        &admin(),
        r#"{"key_hash":"xyz","key_prefix":"ares_1","name":"n"}"#,
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn provision_client_returns_the_contract_shape_and_refuses_unknown_tiers() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let r = post(
        &g.url("/api/admin/provision-client"),
        &admin(),
        r#"{"name":"Beta","tier":"pro","api_key_name":"svc"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    for field in [
        "tenant_id",
        "tenant_name",
        "tier",
        "api_key_id",
        "api_key_prefix",
        "raw_api_key",
    ] {
        assert!(v[field].is_string(), "{field} in {v}");
    }
    assert_eq!(v["tier"], "pro");
    assert!(v["raw_api_key"]
        .as_str()
        .unwrap()
        .starts_with(v["api_key_prefix"].as_str().unwrap()));
    let r = post(
        &g.url("/api/admin/provision-client"),
        &admin(),
        r#"{"name":"Gamma","tier":"gold","api_key_name":"svc"}"#,
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (400, "INVALID_INPUT")
    );
    assert_eq!(
        get(&g.url("/api/admin/tenants"), &admin())
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1,
        "nothing half-made"
    );
}

#[tokio::test]
async fn admin_routes_answer_only_the_allowed_networks() {
    let up = Upstream::start().await;
    // The test client is 127.0.0.1: outside 10.0.0.0/8.
    let g = pipeline(
        &up.url(),
        &[("ARES_ADMIN_ALLOW_CIDRS", "10.0.0.0/8, 192.0.2.7")],
    )
    .await;
    for path in [
        "/api/admin/tenants",
        "/api/admin/agents",
        "/api/admin/export",
    ] {
        let r = get(&g.url(path), &admin()).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (403, "AUTH_FORBIDDEN"),
            "{path}"
        );
    }
    assert_eq!(
        up.count(),
        0,
        "an admin request from outside reached the upstream"
    );
    // Non-admin routes are not affected.
    assert_eq!(get(&g.url("/healthz"), &[]).await.status, 200);

    // Behind a trusted proxy the forwarded client address is the one judged.
    let yaml = shipped_yaml().replace("  trusted_proxies: []", "  trusted_proxies: [127.0.0.1]");
    let g = pipeline_of(config_from(
        &yaml,
        &up.url(),
        &[("ARES_ADMIN_ALLOW_CIDRS", "10.0.0.0/8")],
    ))
    .await;
    let from = |ip: &'static str| {
        let url = g.url("/api/admin/tenants");
        async move { get(&url, &[("x-admin-secret", ADMIN), ("x-forwarded-for", ip)]).await }
    };
    assert_eq!(from("10.1.2.3").await.status, 200);
    assert_eq!(from("198.51.100.4").await.status, 403);

    // Loopback allowed: the secret decides again.
    let g = pipeline(&up.url(), &[("ARES_ADMIN_ALLOW_CIDRS", "127.0.0.0/8")]).await;
    assert_eq!(
        get(&g.url("/api/admin/tenants"), &admin()).await.status,
        200
    );
    let r = get(
        &g.url("/api/admin/tenants"),
        &[("x-admin-secret", "wrong-secret-0123456789")],
    )
    .await;
    assert_eq!(r.status, 401);

    // A value that is not a network is a config error naming the key.
    let err = ares_gateway::config::Config::from_yaml(&shipped_yaml(), &|k| match k {
        "ARES_ADMIN_ALLOW_CIDRS" => Some("10.0.0.0/8, not-a-net".into()),
        "ARES_STORE" => Some("memory".into()),
        _ => None,
    })
    .unwrap_err();
    assert!(
        err.iter()
            .any(|p| p.to_string().contains("server.admin_allow_cidrs")),
        "{err:?}"
    );
}

#[tokio::test]
async fn keys_are_disabled_edited_and_rotated_with_an_overlap() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let (tenant, key_id, raw) = provision(&g, "dev").await;
    let key_url = g.url(&format!("/api/admin/tenants/{tenant}/api-keys/{key_id}"));
    let chat = |raw: String| {
        let url = g.url("/v1/chat");
        async move { post(&url, &[("authorization", &bearer(&raw))], "{}").await }
    };
    assert_eq!(chat(raw.clone()).await.status, 200);

    // Disable: refused at once (the cached copy is dropped); enable: works again.
    let r = send("PATCH", &key_url, &admin(), Some(r#"{"is_active":false}"#)).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["is_active"], false);
    assert_eq!(chat(raw.clone()).await.status, 401);
    let r = send("PATCH", &key_url, &admin(), Some(r#"{"is_active":true}"#)).await;
    assert_eq!(r.json()["is_active"], true);
    assert_eq!(chat(raw.clone()).await.status, 200);

    // Edit name and scopes: an ingest-only key cannot chat.
    let r = send(
        "PATCH",
        &key_url,
        &admin(),
        Some(r#"{"name":"ingest only","scopes":["ingest"]}"#),
    )
    .await;
    assert_eq!(r.json()["name"], "ingest only");
    assert_eq!(chat(raw.clone()).await.status, 403);
    send("PATCH", &key_url, &admin(), Some(r#"{"scopes":["full"]}"#)).await;
    // Bad edits: a past expiry, an unknown field, an unknown key.
    for body in [r#"{"expires_at":1}"#, r#"{"colour":"red"}"#] {
        let r = send("PATCH", &key_url, &admin(), Some(body)).await;
        assert_eq!(r.status, 400, "{body}");
    }
    let r = send(
        "PATCH",
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys/key_nope")),
        &admin(),
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, 404);
    // The raw key and its hash never appear in an answer.
    assert!(!String::from_utf8_lossy(&r.body).contains(&raw));

    // Rotate with a 2 s overlap: both keys work, then only the new one.
    let r = post(
        &format!("{key_url}/rotate"),
        &admin(),
        r#"{"grace_secs":2}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let new_raw = v["raw_key"].as_str().unwrap().to_string();
    assert_ne!(new_raw, raw);
    assert_eq!(v["api_key"]["name"], "ingest only");
    assert!(v["previous"]["expires_at"].as_u64().is_some());
    assert_eq!(chat(new_raw.clone()).await.status, 200);
    assert_eq!(
        chat(raw.clone()).await.status,
        200,
        "the overlap was not kept"
    );
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_eq!(
        chat(raw.clone()).await.status,
        401,
        "the old key outlived its grace"
    );
    assert_eq!(chat(new_raw.clone()).await.status, 200);

    // Rotate with no grace: the old key is refused at once; a disabled key is not rotated.
    let new_id = v["api_key"]["id"].as_str().unwrap().to_string();
    let url = g.url(&format!(
        "/api/admin/tenants/{tenant}/api-keys/{new_id}/rotate"
    ));
    let r = post(&url, &admin(), "{}").await;
    assert_eq!(r.status, 201);
    let newest = r.json()["raw_key"].as_str().unwrap().to_string();
    assert_eq!(chat(new_raw.clone()).await.status, 401);
    assert_eq!(chat(newest).await.status, 200);
    assert_eq!(post(&url, &admin(), "{}").await.status, 400);
    let r = post(&url, &admin(), r#"{"grace_secs":99999999}"#).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn users_are_listed_disabled_logged_out_and_deleted() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let t = login(&g, "ann@users.example").await;
    login(&g, "bob@users.example").await;
    login(&g, "cat@other.example").await;
    let access = t["access_token"].as_str().unwrap().to_string();
    let refresh = t["refresh_token"].as_str().unwrap().to_string();

    // List by email, a page at a time; search by prefix.
    let r = get(&g.url("/api/admin/users?limit=2"), &admin()).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let emails: Vec<&str> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["ann@users.example", "bob@users.example"]);
    let next = v["next"].as_str().unwrap().to_string();
    let r = get(
        &g.url(&format!("/api/admin/users?limit=2&after={next}")),
        &admin(),
    )
    .await;
    assert_eq!(r.json()["users"][0]["email"], "cat@other.example");
    assert!(r.json()["next"].is_null());
    let r = get(&g.url("/api/admin/users?email=ANN%40users"), &admin()).await;
    let users = r.json()["users"].as_array().unwrap().clone();
    assert_eq!(users.len(), 1);
    let ann = users[0]["id"].as_str().unwrap().to_string();
    assert!(
        !String::from_utf8_lossy(&r.body).contains("argon2"),
        "a hash in the answer"
    );
    assert_eq!(
        get(&g.url("/api/admin/users?limit=0"), &admin())
            .await
            .status,
        400
    );
    assert_eq!(get(&g.url("/api/admin/users"), &[]).await.status, 401);
    let r = get(&g.url(&format!("/api/admin/users/{ann}")), &admin()).await;
    assert_eq!(r.json()["email"], "ann@users.example");
    assert_eq!(r.json()["disabled"], false);

    // Disabled: its token is refused at once, login and refresh too.
    let user_url = g.url(&format!("/api/admin/users/{ann}"));
    let r = send("PATCH", &user_url, &admin(), Some(r#"{"disabled":true}"#)).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["disabled"], true);
    let chat = |token: String| {
        let url = g.url("/api/chat");
        async move {
            get(&url, &[("authorization", &bearer(&token))])
                .await
                .status
        }
    };
    assert_eq!(chat(access.clone()).await, 401);
    let login_ann = || {
        let url = g.url("/api/auth/login");
        async move {
            post(
                &url,
                &[],
                r#"{"email":"ann@users.example","password":"your-secure-password"}"#,
            )
            .await
        }
    };
    assert_eq!(login_ann().await.status, 403);
    let r = post(
        &g.url("/api/auth/refresh"),
        &[],
        &format!(r#"{{"refresh_token":"{refresh}"}}"#),
    )
    .await;
    assert_eq!(r.status, 401);
    // Enabled again: a new login works; the admin can end its sessions.
    send("PATCH", &user_url, &admin(), Some(r#"{"disabled":false}"#)).await;
    let r = login_ann().await;
    assert_eq!(r.status, 200);
    let fresh = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(chat(fresh.clone()).await, 200);
    let r = post(&format!("{user_url}/logout"), &admin(), "").await;
    assert_eq!(r.status, 200);
    assert_eq!(chat(fresh).await, 401);
    // Deleted: gone, its email free.
    assert_eq!(send("DELETE", &user_url, &admin(), None).await.status, 204);
    assert_eq!(get(&user_url, &admin()).await.status, 404);
    assert_eq!(login_ann().await.status, 401);
    assert_eq!(send("DELETE", &user_url, &admin(), None).await.status, 404);
    login(&g, "ann@users.example").await;
}

#[tokio::test]
async fn the_audit_trail_is_stored_and_paged() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let (tenant, key_id, _) = provision(&g, "dev").await;
    let r = post(
        &g.url(&format!(
            "/api/admin/tenants/{tenant}/api-keys/{key_id}/rotate"
        )),
        &admin(),
        r#"{"grace_secs":60}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    login(&g, "audited@example.com").await;
    // Failed logins past the per-account-and-IP limit (10 an hour): a security event.
    for _ in 0..11 {
        post(
            &g.url("/api/auth/login"),
            &[],
            r#"{"email":"audited@example.com","password":"wrong-password-123"}"#,
        )
        .await;
    }
    let r = get(&g.url("/api/admin/audit"), &admin()).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let entries = v["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in [
        "tenant.create",
        "api_key.create",
        "api_key.rotate",
        "login.locked",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let rotate = entries
        .iter()
        .find(|e| e["action"] == "api_key.rotate")
        .unwrap();
    assert_eq!(rotate["actor"], "admin:0");
    assert_eq!(rotate["target"], format!("api_key:{tenant}/{key_id}"));
    assert_eq!(rotate["outcome"], "ok");
    assert!(rotate["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    // In order; paged; filtered by target.
    let ids: Vec<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    let r = get(&g.url("/api/admin/audit?limit=1"), &admin()).await;
    let first = r.json();
    assert_eq!(first["entries"].as_array().unwrap().len(), 1);
    let next = first["next"].as_str().unwrap().to_string();
    let r = get(
        &g.url(&format!("/api/admin/audit?limit=1&after={next}")),
        &admin(),
    )
    .await;
    assert_eq!(r.json()["entries"][0]["id"], ids[1]);
    let r = get(
        &g.url(&format!("/api/admin/audit?target=tenant:{tenant}")),
        &admin(),
    )
    .await;
    for e in r.json()["entries"].as_array().unwrap() {
        assert!(e["target"].as_str().unwrap().starts_with("tenant:"));
    }
    assert_eq!(
        get(&g.url("/api/admin/audit?colour=red"), &admin())
            .await
            .status,
        400
    );
    assert_eq!(get(&g.url("/api/admin/audit"), &[]).await.status, 401);
    // Nothing secret in it.
    let text = String::from_utf8_lossy(
        &get(&g.url("/api/admin/audit?limit=1000"), &admin())
            .await
            .body,
    )
    .to_string();
    assert!(
        !text.contains(ADMIN)
            && !text.contains("audited@example.com")
            && !text.contains("wrong-password")
    );
}

#[tokio::test]
async fn a_key_can_have_limits_of_its_own_on_top_of_its_tenants() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let (tenant, key_id, raw) = provision(&g, "dev").await;
    let r = post(
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys")),
        &admin(),
        r#"{"name":"other"}"#,
    )
    .await;
    let other = r.json()["raw_key"].as_str().unwrap().to_string();
    let key_url = g.url(&format!("/api/admin/tenants/{tenant}/api-keys/{key_id}"));
    let r = send(
        "PATCH",
        &key_url,
        &admin(),
        Some(r#"{"requests_per_minute":2}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["limits"]["requests_per_minute"], 2);
    let chat = |raw: String| {
        let url = g.url("/v1/chat");
        async move { post(&url, &[("authorization", &bearer(&raw))], "{}").await }
    };
    let first = chat(raw.clone()).await;
    assert_eq!(first.status, 200);
    // The tighter of the key's and the tenant's windows is reported.
    assert_eq!(first.header("ratelimit-limit"), Some("2"));
    assert_eq!(chat(raw.clone()).await.status, 200);
    let r = chat(raw.clone()).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code().as_str()),
        (429, "RATE_LIMIT_EXCEEDED")
    );
    // The tenant's other key is not held back by it.
    assert_eq!(chat(other).await.status, 200);
    // Cleared: only the tenant's limits again.
    send(
        "PATCH",
        &key_url,
        &admin(),
        Some(r#"{"requests_per_minute":null}"#),
    )
    .await;
    assert_eq!(chat(raw).await.status, 200);
    let r = send(
        "PATCH",
        &key_url,
        &admin(),
        Some(r#"{"requests_per_minute":0}"#),
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn a_keys_usage_is_counted_per_day() {
    let up = Upstream::start().await;
    let g = pipeline(&up.url(), &[]).await;
    let (tenant, key_id, raw) = provision(&g, "dev").await;
    for _ in 0..3 {
        let r = post(
            &g.url("/v1/chat"),
            &[("authorization", &bearer(&raw))],
            "{}",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // The batch the gateway writes every few seconds.
    g.state.housekeeping().await;
    let r = get(
        &g.url(&format!(
            "/api/admin/tenants/{tenant}/api-keys/{key_id}/usage"
        )),
        &admin(),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let days = v["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!(days[29]["requests"], 3, "{v}");
    assert!(days[..29].iter().all(|d| d["requests"] == 0));
    let today = ares_gateway::ratelimit::date(ares_gateway::util::unix_now() / 86_400);
    assert_eq!(days[29]["date"], today.as_str());
    assert!(v["last_used_at"].as_u64().is_some());
    let r = get(
        &g.url(&format!(
            "/api/admin/tenants/{tenant}/api-keys/key_nope/usage"
        )),
        &admin(),
    )
    .await;
    assert_eq!(r.status, 404);
}
