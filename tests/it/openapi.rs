//! openapi.yaml and the implemented endpoints agree: every documented operation, run with its
//! example against a live gateway, answers its documented success status and shape; every
//! undocumented method on a documented path is 405; undocumented paths are 404. And schemathesis
//! (property-based: schema-valid and schema-violating requests by the thousand) finds no
//! mismatch between the description and the running gateway.

use crate::common::*;
use serde_yaml::Value;

fn doc() -> Value {
    serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap(),
    )
    .unwrap()
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut cur = doc;
            for part in r.trim_start_matches("#/").split('/') {
                cur = &cur[part];
            }
            assert!(!cur.is_null(), "dangling $ref {r}");
            resolve(doc, cur)
        }
        None => v,
    }
}

fn rank(path: &str, method: &str) -> u8 {
    match (path, method) {
        ("/api/auth/register", _) => 0,
        ("/api/auth/login", _) => 1,
        ("/api/auth/logout", _) => 3,
        // Ends the test's session: after everything that uses its access token.
        // Both end the session: the password change returns a new one, logout-all is last.
        ("/api/auth/password", _) => 6,
        ("/api/auth/logout-all", _) => 7,
        // The user's own session is over by now: end it from the admin side, then delete it.
        ("/api/admin/users/{user_id}/logout", _) => 8,
        ("/api/admin/users/{user_id}", "delete") => 9,
        ("/api/admin/tenants/{id}", "delete") => 5,
        (_, "delete") => 4,
        _ => 2,
    }
}

#[tokio::test]
async fn every_documented_operation_is_implemented_as_documented() {
    let doc = doc();
    assert_eq!(doc["openapi"].as_str(), Some("3.1.0"));
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    let (tenant, _, _) = provision(&g, "dev").await;
    let r = post(
        &g.url(&format!("/api/admin/tenants/{tenant}/api-keys")),
        &admin(),
        r#"{"name":"spare"}"#,
    )
    .await;
    let spare_key = r.json()["api_key"]["id"].as_str().unwrap().to_string();

    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap().to_string();
        for (method, op) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap().to_string();
            if method != "parameters" {
                ops.push((path.clone(), method, op.clone()));
            }
        }
    }
    assert_eq!(ops.len(), 34, "documented operations");
    ops.sort_by_key(|(p, m, _)| rank(p, m));

    let (mut access, mut refresh, mut user_id) = (String::new(), String::new(), String::new());
    for (path, method, op) in &ops {
        let url_path = path
            .replace("{id}", &tenant)
            .replace("{key_id}", &spare_key)
            .replace("{user_id}", &user_id);
        let mut headers: Vec<(&str, String)> = Vec::new();
        for sec in op["security"].as_sequence().into_iter().flatten() {
            if sec.get("adminSecret").is_some() {
                headers.push(("x-admin-secret", ADMIN.to_string()));
            }
            if sec.get("accessToken").is_some() {
                headers.push(("authorization", bearer(&access)));
            }
        }
        let example = &op["requestBody"]["content"]["application/json"]["example"];
        let body = (!example.is_null()).then(|| {
            serde_json::to_string(&serde_json::to_value(example).unwrap())
                .unwrap()
                .replace("rt_EXAMPLE", &refresh)
        });
        let hdrs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = send(
            &method.to_uppercase(),
            &g.url(&url_path),
            &hdrs,
            body.as_deref(),
        )
        .await;
        let responses = op["responses"].as_mapping().unwrap();
        let success = responses
            .keys()
            .filter_map(|k| k.as_str())
            .filter(|k| k.starts_with('2'))
            .min()
            .unwrap_or_else(|| panic!("{method} {path} documents no success"));
        assert_eq!(
            r.status.as_str(),
            success,
            "{method} {path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        for code in responses.keys().filter_map(|k| k.as_str()) {
            assert!(
                code.len() == 3 && code.chars().all(|c| c.is_ascii_digit()),
                "{method} {path}: {code}"
            );
            resolve(&doc, &responses[code]);
        }
        // The documented required fields are there.
        let schema = resolve(&doc, &responses[success]);
        let schema = resolve(&doc, &schema["content"]["application/json"]["schema"]);
        if let Some(required) = schema["required"].as_sequence() {
            let v = r.json();
            for field in required {
                let f = field.as_str().unwrap();
                assert!(
                    v.get(f).is_some(),
                    "{method} {path}: response lacks {f}: {v}"
                );
            }
        }
        if path == "/api/auth/register" {
            user_id = r.json()["user_id"].as_str().unwrap().to_string();
        }
        if path == "/api/auth/login" || path == "/api/auth/password" {
            let v = r.json();
            access = v["access_token"].as_str().unwrap().to_string();
            refresh = v["refresh_token"].as_str().unwrap().to_string();
        }
    }
}

#[tokio::test]
async fn undocumented_methods_are_405_and_undocumented_paths_404() {
    let doc = doc();
    let up = Upstream::start().await;
    let g = gateway(&up.url(), &[]).await;
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        let path = path.as_str().unwrap();
        let url_path = path.replace("{id}", "ten_x").replace("{key_id}", "key_x");
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                continue;
            }
            let r = send(
                &method.to_uppercase(),
                &g.url(&url_path),
                &admin(),
                Some("{}"),
            )
            .await;
            assert_eq!(
                r.status, 405,
                "{method} {path} is not documented but answered {}",
                r.status
            );
            assert_eq!(r.error_code(), "METHOD_NOT_ALLOWED");
        }
    }
    let r = send("GET", &g.url("/api/auth/unknown"), &[], None).await;
    assert_eq!(r.status, 404);
    // Paths under /api/admin/ that the gateway does not implement are the upstream's (ARES's
    // tenant-agent routes), reached after the admin check.
    for path in [
        "/api/admin/tenants/ten_x/unknown",
        "/api/admin/tenants/ten_x/api-keys/k/extra",
    ] {
        let before = up.count();
        let r = send("GET", &g.url(path), &admin(), None).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(up.count(), before + 1, "{path} reached the upstream");
        assert_eq!(up.last().uri, path);
    }
}

/// The schemathesis command (`.ci/run` installs it in a virtualenv at /opt/schemathesis).
fn schemathesis() -> std::path::PathBuf {
    let path = std::env::var("SCHEMATHESIS")
        .unwrap_or_else(|_| "/opt/schemathesis/bin/st".to_string())
        .into();
    assert!(
        std::fs::metadata(&path).is_ok(),
        "schemathesis is required at {path:?} (.ci/run installs it; or set SCHEMATHESIS)"
    );
    path
}

/// Issue 24: schemathesis found 35 mismatches (schema-valid requests refused, undocumented
/// statuses). Every check of schemathesis, on every operation, for a minute of generated
/// requests with a fixed seed; the exceptions (rules JSON Schema cannot state) are listed with
/// their reasons in tests/schemathesis.toml. The per-address limits of /api/auth/* are raised so
/// that the run tests the endpoints, not the limiter.
#[tokio::test]
async fn schemathesis_finds_no_mismatch_between_the_description_and_the_gateway() {
    let st = schemathesis();
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = shipped_yaml().replace(
        "    requests_per_minute: 30\n    requests_per_hour: 300\n",
        "    requests_per_minute: 100000000\n",
    );
    for failures in ["requests_per_hour: 10\n", "requests_per_hour: 100\n"] {
        yaml = yaml.replace(failures, "requests_per_hour: 100000000\n");
    }
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, yaml).unwrap();
    let (mut child, base) = serve_binary_with(&config, "http://127.0.0.1:1", &[]).await;
    let token = access_token_at(&base, "st@example.com").await;
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tokio::process::Command::new(st)
        .current_dir(root)
        .args([
            "--no-color",
            "--config-file",
            "tests/schemathesis.toml",
            "run",
            "openapi.yaml",
        ])
        .args([
            "--url",
            &base,
            "--seed",
            "1",
            "--workers",
            "2",
            "--max-time",
            "60",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["-H", &format!("X-Admin-Secret: {ADMIN}")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .output()
        .await
        .unwrap();
    sigterm(&child);
    let _ = child.wait().await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found mismatches:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("generated"), "no test case ran:\n{text}");
}
