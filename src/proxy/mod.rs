//! Header hygiene, identity headers, and the streaming forward to an upstream.
//!
//! Order matters and is fixed: [`strip_spoofable`] runs on every request before anything else
//! reads its headers; [`rewrite_request`] adds what the gateway vouches for (only for a request
//! the Limiter admitted: `limiter::Admitted`); [`forward`] streams both bodies;
//! [`rewrite_response`] drops hop-by-hop headers and bounds the time a streamed body may stall.
//!
//! ```text
//! hygiene.rs   strip_spoofable (step 1), the header statics, hop-by-hop stripping
//! identity.rs  rewrite_request: target, Host, identity headers, forwarding headers, body bound
//! forward.rs   UpstreamClient (the shared pool), forward, rewrite_response
//! tunnel.rs    switching_protocols, spawn_tunnel (WebSocket byte tunnel)
//! ```

pub mod conn_upstreams;
mod forward;
mod hygiene;
mod identity;
mod tunnel;

pub use forward::*;
pub use hygiene::*;
pub use identity::*;
pub use tunnel::*;

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{self, HeaderMap, HeaderName, HeaderValue};
    use http::Uri;
    use ipnet::IpNet;
    use std::net::SocketAddr;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn peer(ip: &str) -> Peer {
        Peer::new(SocketAddr::new(ip.parse().unwrap(), 5555))
    }

    #[test]
    fn stripped_names_are_exactly_the_identity_forwarding_and_hop_by_hop_ones() {
        let forwarding = [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &FORWARDED,
        ];
        for name in IDENTITY_HEADERS.into_iter().chain(forwarding) {
            assert!(is_stripped(name), "{name}");
        }
        for name in HOP_BY_HOP {
            assert!(is_stripped(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            &X_REQUEST_ID,
            &TRACEPARENT,
            &X_ADMIN_SECRET,
            &header::HOST,
            &header::AUTHORIZATION,
            &header::CONTENT_TYPE,
        ] {
            assert!(!is_stripped(name), "{name}");
        }
    }

    #[test]
    fn regression_underscored_identity_headers_and_client_x_real_ip_were_forwarded() {
        let mut h = hm(&[
            ("X_Tenant_Id", "ten_evil"),
            ("x_user_id", "usr_evil"),
            ("my_custom_header", "v"),
            ("x-real-ip", "6.6.6.6"),
            ("content-type", "application/json"),
        ]);
        strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
        assert!(h.keys().all(|n| !n.as_str().contains('_')), "{h:?}");
        assert!(h.get("x-real-ip").is_none());
        assert_eq!(h["content-type"], "application/json");
        // From a trusted proxy X-Real-IP stays, like its X-Forwarded-For.
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = hm(&[("x-real-ip", "7.7.7.7")]);
        strip_spoofable(
            &mut h,
            &peer("10.1.2.3"),
            false,
            &Uri::from_static("/"),
            &trusted,
        );
        assert_eq!(h["x-real-ip"], "7.7.7.7");
    }

    #[test]
    fn regression_an_upstreams_content_length_beside_transfer_encoding_was_forwarded() {
        let mut h = hm(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("transfer-encoding").is_none());
        assert!(h.get("content-length").is_none(), "{h:?}");
        // Without Transfer-Encoding the length is the body's, and stays.
        let mut h = hm(&[("content-length", "5"), ("connection", "keep-alive")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["content-length"], "5");
    }

    #[test]
    fn identity_headers_are_stripped_in_any_case_and_multiplicity() {
        let mut h = hm(&[
            ("X-Tenant-Id", "t_evil"),
            ("x-tenant-id", "t_evil2"),
            ("X-TENANT-TIER", "enterprise"),
            ("x-api-key-id", "k"),
            ("X-User-Id", "usr_admin"),
            ("x-user-email", "root@x"),
            ("X-Auth-Method", "admin"),
            ("content-type", "application/json"),
        ]);
        strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
        for n in IDENTITY_HEADERS {
            assert!(h.get(n).is_none(), "{n} survived");
        }
        assert_eq!(h["content-type"], "application/json");
    }

    #[test]
    fn connection_named_headers_and_hop_by_hop_are_dropped() {
        let mut h = hm(&[
            ("connection", "keep-alive, X-Custom, x-user-id"),
            ("x-custom", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("upgrade", "h2c"),
            ("x-other", "kept"),
            ("proxy-connection", "close"),
            ("proxy-authenticate", "Basic"),
            ("trailer", "x-a"),
            ("transfer-encoding", "chunked"),
            ("keep-alive", "max=5"),
        ]);
        let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
        assert!(!ctx.websocket_upgrade);
        assert_eq!(h.len(), 1);
        for n in HOP_BY_HOP.into_iter().chain(["x-custom"]) {
            assert!(h.get(n).is_none(), "{n} survived");
        }
        assert_eq!(h["x-other"], "kept");

        // A plain `keep-alive` in one Connection header does not hide what another names.
        let mut h = hm(&[
            ("connection", "Keep-Alive"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("x-other", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get("connection").is_none());
        assert_eq!(h["x-other"], "kept");
    }

    #[test]
    fn websocket_upgrade_is_detected() {
        let mut h = hm(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
        assert!(ctx.websocket_upgrade);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = hm(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        let ctx = strip_spoofable(
            &mut h,
            &peer("1.2.3.4"),
            false,
            &Uri::from_static("/"),
            &trusted,
        );
        assert_eq!(ctx.client_ip.to_string(), "1.2.3.4");
        assert_eq!(ctx.forwarded_for, "1.2.3.4");
        assert_eq!(ctx.forwarded_proto, "http");

        let mut h = hm(&[
            ("x-forwarded-for", "6.6.6.6, 7.7.7.7, 10.0.0.9"),
            ("x-forwarded-proto", "https"),
        ]);
        let ctx = strip_spoofable(
            &mut h,
            &peer("10.0.0.1"),
            false,
            &Uri::from_static("/"),
            &trusted,
        );
        assert_eq!(ctx.client_ip.to_string(), "7.7.7.7");
        assert_eq!(ctx.forwarded_for, "6.6.6.6, 7.7.7.7, 10.0.0.9, 10.0.0.1");
        assert_eq!(ctx.forwarded_proto, "https");
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let mut h = hm(&[("x-request-id", "abc-123_x.y")]);
        let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
        assert_eq!(ctx.request_id, "abc-123_x.y");
        for bad in ["a b", &"x".repeat(129), "<script>"] {
            let mut h = hm(&[("x-request-id", bad)]);
            let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
            assert_ne!(ctx.request_id, bad);
            assert_eq!(ctx.request_id.len(), 32);
        }
    }

    #[test]
    fn traceparent_is_kept_when_valid_and_created_otherwise() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = hm(&[("traceparent", good)]);
        let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
        assert_eq!(ctx.traceparent, good);
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut h = hm(&[("traceparent", bad)]);
            let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
            assert_ne!(ctx.traceparent, bad);
            assert!(valid_traceparent(&ctx.traceparent));
        }
    }

    #[test]
    fn query_token_is_removed_before_forwarding() {
        assert_eq!(
            strip_query_token("a=1&access_token=s3cret&b=2", true),
            "a=1&b=2"
        );
        assert_eq!(strip_query_token("access_token=s3cret", true), "");
        assert_eq!(strip_query_token("access_token=x", false), "access_token=x");
    }

    #[test]
    fn the_name_match_covers_every_removed_header() {
        for name in IDENTITY_HEADERS {
            assert!(is_stripped(name), "{name}");
        }
        for name in [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &FORWARDED,
            &X_REAL_IP,
        ] {
            assert!(is_stripped(name), "{name}");
        }
        for name in [
            header::CONNECTION,
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
            header::PROXY_AUTHORIZATION,
            header::PROXY_AUTHENTICATE,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
        ] {
            assert!(is_hop_by_hop(&name) && is_stripped(&name), "{name}");
            assert!(HOP_BY_HOP.contains(&name.as_str()), "{name}");
        }
        assert_eq!(HOP_BY_HOP.len(), 9);
        for name in REWRITE_HEADERS {
            assert!(is_stripped(&HeaderName::from_static(name)), "{name}");
        }
        for name in [
            header::HOST,
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            X_REQUEST_ID.clone(),
        ] {
            assert!(!is_stripped(&name), "{name}");
        }
    }

    #[test]
    fn a_new_trace_gives_its_trace_id_as_request_id_and_ids_differ() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let mut h = hm(&[]);
            let ctx = strip_spoofable(&mut h, &peer("1.2.3.4"), false, &Uri::from_static("/"), &[]);
            assert!(valid_traceparent(&ctx.traceparent));
            assert_eq!(ctx.request_id.to_str().unwrap(), ctx.trace_id());
            assert!(seen.insert(ctx.trace_id().to_string()), "trace ids repeat");
            assert_eq!(ctx.forwarded_for, "1.2.3.4");
        }
    }
}
