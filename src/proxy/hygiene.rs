//! Step 1 of every request, and the last of every response: who the request is (request id,
//! trace context, client address from trusted proxies only), and every header a client could use
//! to impersonate the gateway removed; hop-by-hop headers dropped both ways.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Uri;
use ipnet::IpNet;

/// Remove `bearer, <token>` from `Sec-WebSocket-Protocol` (the token must not reach the
/// upstream); the header goes when nothing else is left. True when the form was there: the
/// 101 then names `bearer`, the protocol a browser requires back.
pub fn strip_protocol_token(headers: &mut HeaderMap) -> bool {
    if crate::auth::protocol_token(headers).is_none() {
        return false;
    }
    let all: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    let mut kept = Vec::with_capacity(all.len());
    let mut entries = all.into_iter();
    while let Some(e) = entries.next() {
        if e.eq_ignore_ascii_case("bearer") {
            entries.next();
        } else {
            kept.push(e);
        }
    }
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        if !kept.is_empty() {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    true
}

pub static X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
pub static X_TENANT_TIER: HeaderName = HeaderName::from_static("x-tenant-tier");
pub static X_API_KEY_ID: HeaderName = HeaderName::from_static("x-api-key-id");
pub static X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub static X_USER_EMAIL: HeaderName = HeaderName::from_static("x-user-email");
pub static X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_ADMIN_SECRET: HeaderName = HeaderName::from_static("x-admin-secret");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Headers only the gateway may set: removed from every client request on every route.
pub const IDENTITY_HEADERS: [&HeaderName; 6] = [
    &X_TENANT_ID,
    &X_TENANT_TIER,
    &X_API_KEY_ID,
    &X_USER_ID,
    &X_USER_EMAIL,
    &X_AUTH_METHOD,
];

/// Facts about a request gathered before routing.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: HeaderValue,
    /// The client, after believing `X-Forwarded-For` from trusted proxies only.
    pub client_ip: IpAddr,
    pub peer: SocketAddr,
    /// The `X-Forwarded-For` chain to send upstream (client's entries only when trusted).
    pub forwarded_for: HeaderValue,
    pub forwarded_proto: HeaderValue,
    pub forwarded_host: Option<HeaderValue>,
    /// The client asked for a WebSocket upgrade (honoured only where the route allows).
    pub websocket_upgrade: bool,
    /// W3C trace context sent upstream: the client's when well-formed, else a new one (with
    /// tracing on, the gateway's own span in the same trace).
    pub traceparent: HeaderValue,
    /// `traceparent` is the client's (its span is then the gateway span's parent).
    pub trace_from_client: bool,
}

impl RequestContext {
    /// The 32-hex trace id, for the access log.
    pub fn trace_id(&self) -> &str {
        self.traceparent
            .to_str()
            .ok()
            .and_then(|t| t.get(3..35))
            .unwrap_or("-")
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero (W3C Trace Context, version 00).
pub(crate) fn valid_traceparent(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let nonzero = |s: &[u8]| s.iter().any(|c| *c != b'0');
    b.len() == 55
        && &b[..3] == b"00-"
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[3..35])
        && nonzero(&b[3..35])
        && hex(&b[36..52])
        && nonzero(&b[36..52])
        && hex(&b[53..55])
}

thread_local! {
    /// Ids need to be unique and unguessable enough for correlation, not secret: a fast
    /// generator per thread, seeded from the OS.
    static IDS: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::SeedableRng::from_os_rng());
}

/// A new W3C `traceparent`, and its trace id (32 hex digits) as a request id: one buffer.
fn new_traceparent() -> (HeaderValue, HeaderValue) {
    let (trace, span) = IDS.with(|r| {
        let mut r = r.borrow_mut();
        (
            rand::Rng::random::<u128>(&mut *r) | 1,
            rand::Rng::random::<u64>(&mut *r) | 1,
        )
    });
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-01";
    crate::util::put_hex(&mut buf[3..35], trace);
    crate::util::put_hex(&mut buf[36..52], u128::from(span));
    let bytes = bytes::Bytes::copy_from_slice(&buf);
    let fallback =
        || HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01");
    let id = HeaderValue::from_maybe_shared(bytes.slice(3..35))
        .unwrap_or_else(|_| HeaderValue::from_static("0"));
    (
        HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| fallback()),
        id,
    )
}

fn sane_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

fn new_request_id() -> HeaderValue {
    let n: u128 = IDS.with(|r| rand::Rng::random(&mut *r.borrow_mut()));
    let mut buf = [0u8; 32];
    crate::util::put_hex(&mut buf, n);
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

/// A client connection's address, with its `X-Forwarded-For` value made once per connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub header: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        let header = HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        Peer { addr, header }
    }
}

/// Headers [`strip_spoofable`] removes or reads specially: identity ([`IDENTITY_HEADERS`]),
/// forwarding, hop-by-hop. A `match` on the name, like [`is_hop_by_hop`]; a test keeps it and
/// the header statics in step.
pub(crate) fn is_stripped(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || matches!(
            name.as_str(),
            "x-tenant-id"
                | "x-tenant-tier"
                | "x-api-key-id"
                | "x-user-id"
                | "x-user-email"
                | "x-auth-method"
                | "x-forwarded-for"
                | "x-forwarded-proto"
                | "x-forwarded-host"
                | "x-real-ip"
                | "forwarded"
        )
        || is_rewrite(name)
}

/// Headers some frameworks and proxies read as the request's "real" path or method
/// (Symfony/IIS `X-Original-URL` and `X-Rewrite-URL`, `X-Forwarded-Prefix`/`-Path` of Spring and
/// Traefik, the `X-HTTP-Method-Override` family): an upstream honouring one would route the
/// request somewhere the gateway did not classify it. Removed like the identity headers.
pub(crate) const REWRITE_HEADERS: [&str; 8] = [
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-forwarded-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

fn is_rewrite(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "x-original-url"
            | "x-rewrite-url"
            | "x-forwarded-prefix"
            | "x-forwarded-path"
            | "x-forwarded-uri"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
    )
}

/// A name with `_`: CGI/WSGI-style upstreams fold `_` and `-` together, so `X_User_Id` would
/// reach them as the gateway's own `X-User-Id`. Dropped like Envoy's
/// `headers_with_underscores_action: DROP_HEADER`.
fn has_underscore(name: &HeaderName) -> bool {
    name.as_str().as_bytes().contains(&b'_')
}

/// The hop-by-hop headers (RFC 9110 7.6.1), removed both ways.
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A hop-by-hop header (a `match` on the name: no hashing).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    trusted.iter().any(|n| n.contains(&ip))
}

/// Step 1 of the pipeline: identify the request and remove every header a client could use to
/// impersonate the gateway. Runs before anything else reads the headers.
pub fn strip_spoofable(
    headers: &mut HeaderMap,
    peer: &Peer,
    tls: bool,
    uri: &Uri,
    trusted: &[IpNet],
) -> RequestContext {
    // Most requests carry none of the headers read or removed below: one pass over the names
    // tells, and spares the lookups (each hashes the name) and removals.
    let (mut stripped, mut traced, mut identified) = (false, false, false);
    let mut underscored = false;
    for name in headers.keys() {
        stripped |= is_stripped(name);
        underscored |= has_underscore(name);
        traced |= name == TRACEPARENT;
        identified |= name == X_REQUEST_ID;
    }
    let client_trace = traced
        .then(|| headers.get(&TRACEPARENT))
        .flatten()
        .filter(|v| valid_traceparent(v))
        .cloned();
    let client_id = identified
        .then(|| headers.get(&X_REQUEST_ID))
        .flatten()
        .filter(|v| sane_request_id(v))
        .cloned();
    let trace_from_client = client_trace.is_some();
    let (traceparent, request_id) = match (client_trace, client_id) {
        (Some(t), Some(id)) => (t, id),
        (Some(t), None) => (t, new_request_id()),
        // A new trace: its trace id doubles as the request id.
        (None, id) => {
            let (t, trace_id) = new_traceparent();
            (t, id.unwrap_or(trace_id))
        }
    };
    let websocket_upgrade = stripped
        && connection_names(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if stripped {
        // Connection may name any header as hop-by-hop, including the identity headers.
        strip_hop_by_hop(headers);
        for name in IDENTITY_HEADERS {
            headers.remove(name);
        }
        for name in REWRITE_HEADERS {
            headers.remove(name);
        }
    }

    let peer_ip = peer.addr.ip();
    let trusted_peer = !trusted.is_empty() && is_trusted(peer_ip, trusted);
    let prior = if stripped {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    } else {
        String::new()
    };
    let mut client_ip = peer_ip;
    let forwarded_for;
    if trusted_peer && !prior.is_empty() {
        // Walk from the right: the first address not of a trusted proxy is the client.
        for entry in prior.rsplit(',') {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client_ip = ip;
                    if !is_trusted(ip, trusted) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        forwarded_for =
            HeaderValue::from_str(&format!("{prior}, {peer_ip}")).unwrap_or_else(|_| {
                HeaderValue::from_str(&peer_ip.to_string())
                    .unwrap_or(HeaderValue::from_static("unknown"))
            });
    } else {
        forwarded_for = peer.header.clone();
    }
    let own_proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    let forwarded_proto = if trusted_peer {
        headers
            .get(&X_FORWARDED_PROTO)
            .filter(|v| v.as_bytes() == b"https" || v.as_bytes() == b"http")
            .cloned()
            .unwrap_or(own_proto)
    } else {
        own_proto
    };
    let own_host = headers.get(header::HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let forwarded_host = if trusted_peer {
        headers.get(&X_FORWARDED_HOST).cloned().or(own_host)
    } else {
        own_host
    };
    if stripped {
        headers.remove(&X_FORWARDED_FOR);
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
        headers.remove(&FORWARDED);
        // Believed only from a trusted proxy, like X-Forwarded-For.
        if !trusted_peer {
            headers.remove(&X_REAL_IP);
        }
    }
    if underscored {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| has_underscore(n))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }

    RequestContext {
        request_id,
        client_ip,
        peer: peer.addr,
        forwarded_for,
        forwarded_proto,
        forwarded_host,
        websocket_upgrade,
        traceparent,
        trace_from_client,
    }
}

/// The tokens of every `Connection` header.
pub(crate) fn connection_names(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(str::trim)
}

/// Remove the hop-by-hop headers and every header `Connection` names.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names finds the hop-by-hop ones (each name appears once in `keys`).
    let mut found: [Option<HeaderName>; HOP_BY_HOP.len()] = Default::default();
    let hop = h.keys().filter(|n| is_hop_by_hop(n));
    for (slot, name) in found.iter_mut().zip(hop) {
        *slot = Some(name.clone());
    }
    if found[0].is_none() {
        return;
    }
    // Usually just `Connection: keep-alive` or `close`, which name no other header: those
    // need no parsing.
    let plain = h.get_all(header::CONNECTION).iter().all(|v| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    });
    if !plain {
        let named: Vec<HeaderName> = connection_names(h)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !is_hop_by_hop(n))
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for name in found.into_iter().flatten() {
        // A message framed by Transfer-Encoding has no meaningful Content-Length (RFC 9112
        // 6.3): forwarded, the length would describe a body that is not the one sent.
        if name == header::TRANSFER_ENCODING {
            h.remove(header::CONTENT_LENGTH);
        }
        h.remove(name);
    }
}
