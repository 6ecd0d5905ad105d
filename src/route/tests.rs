use super::*;

const TIMEOUTS: UpstreamTimeouts = UpstreamTimeouts {
    connect: Duration::from_secs(1),
    first_byte: Duration::from_secs(1),
    idle: Duration::from_secs(1),
    pool_idle: Duration::from_secs(1),
    pool_max_idle_per_host: 1,
};

#[test]
fn normalisation_table() {
    let ok = [
        ("/", "/"),
        ("/v1/chat", "/v1/chat"),
        ("/v1/chat/", "/v1/chat/"),
        ("//api//admin///tenants", "/api/admin/tenants"),
        ("/api/./admin", "/api/admin"),
        ("/api/v1/../admin/tenants", "/api/admin/tenants"),
        ("/api/v1/%2e%2e/admin", "/api/admin"),
        ("/api/v1/.%2E/admin", "/api/admin"),
        ("/api/%61dmin/tenants", "/api/admin/tenants"),
        ("/api/%7Euser", "/api/~user"),
        ("/api/a%20b", "/api/a%20b"),
        ("/api/a%3fb", "/api/a%3Fb"),
        ("/api/..", "/"),
        ("/api/x/..", "/api/"),
        ("/.", "/"),
    ];
    for (input, want) in ok {
        assert_eq!(normalize(input).as_deref(), Ok(want), "input {input}");
    }
    let bad = [
        ("/..", PathError::AboveRoot),
        ("/api/../../etc", PathError::AboveRoot),
        ("/%2e%2e/x", PathError::AboveRoot),
        ("/api%2fadmin", PathError::EncodedSeparator),
        ("/api%2Fadmin", PathError::EncodedSeparator),
        ("/api%5cadmin", PathError::EncodedSeparator),
        ("/api\\admin", PathError::Backslash),
        ("/api/%00", PathError::ControlCharacter),
        ("/api/%0d%0a", PathError::ControlCharacter),
        ("/api/%7f", PathError::ControlCharacter),
        ("/api/%zz", PathError::BadPercentEncoding),
        ("/api/%2", PathError::BadPercentEncoding),
        ("*", PathError::NotAbsolute),
        ("", PathError::NotAbsolute),
    ];
    for (input, want) in bad {
        assert_eq!(normalize(input), Err(want), "input {input:?}");
    }
}

#[test]
fn regression_non_ascii_bytes_were_copied_as_latin1_and_not_idempotent() {
    // fuzz/artifacts/path crash-51c470ea: "/]/.\u{76f}" (bytes DD AF) became "/]/.\u{dd}\u{af}" as Latin-1.
    let n = normalize("/]/.\u{76f}").unwrap();
    assert_eq!(n, "/]/.%DD%AF");
    assert_eq!(normalize(&n).as_deref(), Ok(&*n));
    let n = normalize("/api/caf\u{e9}/../x").unwrap();
    assert_eq!(n, "/api/x");
    assert_eq!(normalize("/api/caf\u{e9}").unwrap(), "/api/caf%C3%A9");
}

#[test]
fn clean_paths_are_not_copied() {
    assert!(matches!(normalize("/v1/chat"), Ok(Cow::Borrowed(_))));
}

fn up() -> Arc<Upstream> {
    Arc::new(Upstream::parse("default", "http://127.0.0.1:3000", TIMEOUTS).unwrap())
}

fn table() -> RouteTable {
    let r = |p: &str, auth, t: Target, upp: Option<&str>| {
        Route::new(
            p.into(),
            auth,
            t,
            upp.map(Into::into),
            None,
            Credential::None,
            false,
            false,
        )
    };
    RouteTable::new(vec![
        r("/api/", AuthKind::Jwt, Target::Upstream(up()), None),
        r("/api/admin/", AuthKind::Admin, Target::Upstream(up()), None),
        r(
            "/api/admin/tenants",
            AuthKind::Admin,
            Target::Handler(Handler::Admin),
            None,
        ),
        r(
            "/v1/",
            AuthKind::ApiKey,
            Target::Upstream(up()),
            Some("/api/v1/"),
        ),
        r(
            "/healthz",
            AuthKind::None,
            Target::Handler(Handler::Health),
            None,
        ),
    ])
}

/// Pins what cargo-mutants found loose in this module (unit tests only).
#[test]
fn raw_control_bytes_and_final_dot_segments() {
    for raw in ["/api/\u{1}", "/api/a\u{1f}b", "/api/\u{7f}", "/api/\t"] {
        assert_eq!(normalize(raw), Err(PathError::ControlCharacter), "{raw:?}");
    }
    // A final `.` or `..` leaves a directory path, as a final `/` does.
    assert_eq!(normalize("/api/x/.").as_deref(), Ok("/api/x/"));
    assert_eq!(normalize("/api/x/y/..").as_deref(), Ok("/api/x/"));
    assert_eq!(normalize("/api/x/").as_deref(), Ok("/api/x/"));
    assert_eq!(normalize("/api/x").as_deref(), Ok("/api/x"));
}

#[test]
fn names_round_trip_and_only_bearer_routes_are_bearer() {
    let kinds = [
        (AuthKind::None, "none", false),
        (AuthKind::ApiKey, "api_key", true),
        (AuthKind::Jwt, "jwt", true),
        (AuthKind::Admin, "admin", false),
    ];
    for (kind, name, bearer) in kinds {
        assert_eq!(kind.as_str(), name);
        assert_eq!(kind.is_bearer(), bearer, "{name}");
    }
    for (h, name) in [
        (Handler::Auth, "auth"),
        (Handler::Admin, "admin"),
        (Handler::Health, "health"),
        (Handler::WellKnown, "well_known"),
    ] {
        assert_eq!(h.as_str(), name);
    }
    for (c, name) in [
        (Credential::None, "none"),
        (Credential::Passthrough, "passthrough"),
        (Credential::Mint, "mint"),
    ] {
        assert_eq!(c.as_str(), name);
        assert_eq!(Credential::parse(name), Some(c));
        assert_eq!(Credential::parse(&format!(" {name} ")), Some(c));
    }
    assert_eq!(Credential::parse("bearer"), None);
}

#[test]
fn the_table_lists_its_routes_and_upstream_routes_are_found_past_handlers() {
    let t = table();
    assert_eq!(t.routes().len(), 5);
    // Past the admin handler's prefix, the longest *upstream* route; nothing outside them.
    let up_route = t.classify_upstream("/api/admin/tenants/x").unwrap();
    assert_eq!(up_route.prefix, "/api/admin/");
    assert_eq!(up_route.target_name(), "upstream default");
    assert!(t.classify_upstream("/healthz").is_none());
    assert!(t.classify_upstream("/elsewhere").is_none());
    let handler = t.classify("/api/admin/tenants").unwrap();
    assert_eq!(handler.target_name(), "handler admin");
    let shown = t.to_string();
    assert!(shown.starts_with("prefix"), "{shown}");
    assert!(shown.contains("/api/admin/tenants"), "{shown}");
    assert!(shown.contains("/v1/"), "{shown}");
}

#[test]
fn upstream_urls_choose_their_scheme_and_mint_config_hides_its_secret() {
    assert!(
        Upstream::parse("a", "https://ares.example", TIMEOUTS)
            .unwrap()
            .https
    );
    assert!(
        !Upstream::parse("a", "http://127.0.0.1:3000", TIMEOUTS)
            .unwrap()
            .https
    );
    assert!(Upstream::parse("a", "ftp://ares.example", TIMEOUTS).is_err());
    let mint = MintConfig {
        signing: super::MintSigning::Secret(crate::util::Secret::new(
            "mint-secret-never-printed".into(),
        )),
        ttl_secs: 60,
        claims: serde_json::Map::new(),
    };
    let shown = format!("{mint:?}");
    assert!(
        shown.contains("MintConfig") && shown.contains("ttl_secs: 60"),
        "{shown}"
    );
    assert!(!shown.contains("mint-secret-never-printed"), "{shown}");
}

#[test]
fn longest_prefix_on_segment_boundaries() {
    let t = table();
    let prefix = |p: &str| t.classify(p).map(|r| r.prefix.as_str());
    assert_eq!(prefix("/api/admin/tenants"), Some("/api/admin/tenants"));
    assert_eq!(
        prefix("/api/admin/tenants/t1/api-keys"),
        Some("/api/admin/tenants")
    );
    assert_eq!(prefix("/api/admin/tenantsx"), Some("/api/admin/"));
    assert_eq!(prefix("/api/admin"), Some("/api/admin/"));
    assert_eq!(prefix("/api/administrator"), Some("/api/"));
    assert_eq!(prefix("/api/chat"), Some("/api/"));
    assert_eq!(prefix("/v1"), Some("/v1/"));
    assert_eq!(prefix("/v1x"), None);
    assert_eq!(prefix("/healthz"), Some("/healthz"));
    assert_eq!(prefix("/healthz/x"), Some("/healthz"));
    assert_eq!(prefix("/healthzz"), None);
    assert_eq!(prefix("/"), None);
}

#[test]
fn upstream_prefix_rewrites_only_the_prefix() {
    let t = table();
    let r = t.classify("/v1/chat").unwrap();
    assert_eq!(r.forward_path("/v1/chat"), "/api/v1/chat");
    assert_eq!(r.forward_path("/v1/"), "/api/v1/");
    assert_eq!(r.forward_path("/v1"), "/api/v1");
    let api = t.classify("/api/chat").unwrap();
    assert_eq!(api.forward_path("/api/chat"), "/api/chat");
}

#[test]
fn encoded_tricks_cannot_reach_the_admin_rule_from_a_jwt_route() {
    let t = table();
    for raw in [
        "/api/chat/../admin/tenants",
        "/api/%2e%2e/api/admin/tenants",
    ] {
        let p = normalize(raw).unwrap();
        assert_eq!(t.classify(&p).unwrap().auth, AuthKind::Admin, "{raw}");
    }
}

#[test]
fn regression_admin_looking_paths_were_classified_under_weaker_auth() {
    let t = table();
    for path in [
        "/api/ADMIN/tenants",
        "/api/Admin/x",
        "/api/admin;x/tenants",
        "/api/admin%3Bx/tenants",
        "/api/admin%3bjsessionid=1/agents",
    ] {
        let route = t.classify(path).unwrap();
        assert_eq!(route.auth, AuthKind::Jwt, "{path}");
        assert!(t.is_ambiguous(path, route), "{path}");
    }
    // A path no route takes stays a 404, whatever its readings.
    assert!(t.classify("/API/admin;x/y").is_none());
    // Upper case and parameters that change no credential rule pass.
    for path in [
        "/api/chat/ABC",
        "/api/Chat",
        "/api/chat;v=1",
        "/v1/Chat",
        "/api/admin/X",
    ] {
        let route = t.classify(path).unwrap();
        assert!(!t.is_ambiguous(path, route), "{path}");
    }
}
