//! Rate-limit scope names, one place so every store and the usage endpoint agree: a kind prefix
//! and an id (`t:ten_1`). Built without `format!`: the tenant and user scopes are built on every
//! request.

fn join(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

pub fn tenant(id: &str) -> String {
    join(&["t:", id])
}
/// The prefix of user scopes.
pub const USER: &str = "u:";

pub fn user(id: &str) -> String {
    join(&[USER, id])
}
/// An API key's own limits, by key id.
pub fn api_key(id: &str) -> String {
    join(&["k:", id])
}
pub fn auth_ip(ip: &std::net::IpAddr) -> String {
    format!("ip:{ip}")
}
pub fn login_account_ip(email_hash: &str, ip: &std::net::IpAddr) -> String {
    format!("la:{email_hash}:{ip}")
}
/// Refused API keys from one client address.
pub fn key_failures_ip(ip: &std::net::IpAddr) -> String {
    format!("kf:{ip}")
}
pub fn admin_failures_ip(ip: &std::net::IpAddr) -> String {
    format!("af:{ip}")
}
pub fn login_account(email_hash: &str) -> String {
    join(&["lf:", email_hash])
}

#[cfg(test)]
mod tests {
    #[test]
    fn names() {
        assert_eq!(super::tenant("ten_1"), "t:ten_1");
        assert_eq!(super::user("usr_9"), "u:usr_9");
        assert_eq!(super::login_account("ab12"), "lf:ab12");
        let ip = std::net::IpAddr::from([10, 0, 0, 1]);
        assert_eq!(super::auth_ip(&ip), "ip:10.0.0.1");
        assert_eq!(super::login_account_ip("ab12", &ip), "la:ab12:10.0.0.1");
    }
}
