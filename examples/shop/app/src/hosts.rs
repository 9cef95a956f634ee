//! Service names, resolved from /etc/hosts by hand: the images have no libc, so no NSS.

use std::net::IpAddr;

/// The address of `name` in a hosts file's text: the first line that lists it (as its
/// canonical name or an alias). Comments and malformed lines are skipped.
pub fn lookup(hosts: &str, name: &str) -> Option<IpAddr> {
    hosts.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let addr: IpAddr = fields.next()?.parse().ok()?;
        fields.any(|n| n.eq_ignore_ascii_case(name)).then_some(addr)
    })
}

/// `name` (a service, "catalog") or `name:port` as a socket address string: an IP literal
/// is kept; a name is looked up in /etc/hosts; port 80 when none is given.
pub fn resolve(target: &str) -> Result<String, String> {
    let (name, port) = match target.rsplit_once(':') {
        Some((n, p)) if p.parse::<u16>().is_ok() && !n.contains(':') => (n, p),
        _ => (target, "80"),
    };
    if name.parse::<IpAddr>().is_ok() {
        return Ok(format!("{name}:{port}"));
    }
    let text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    match lookup(&text, name) {
        Some(IpAddr::V6(a)) => Ok(format!("[{a}]:{port}")),
        Some(a) => Ok(format!("{a}:{port}")),
        None => Err(format!("{name}: not in /etc/hosts")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTS: &str = "127.0.0.1 localhost\n# 10.0.0.9 catalog\n\
        10.96.0.2\tcatalog catalog.shop # the catalog\nnot-an-ip cart\n10.96.0.3 cart\n\
        10.96.0.4 orders\n10.96.0.5 orders\n::1 ip6-localhost\n";

    #[test]
    fn names_and_aliases_resolve_to_the_first_line_that_lists_them() {
        assert_eq!(lookup(HOSTS, "catalog"), Some("10.96.0.2".parse().unwrap()));
        assert_eq!(
            lookup(HOSTS, "catalog.shop"),
            Some("10.96.0.2".parse().unwrap())
        );
        assert_eq!(lookup(HOSTS, "CART"), Some("10.96.0.3".parse().unwrap()));
        assert_eq!(lookup(HOSTS, "orders"), Some("10.96.0.4".parse().unwrap()));
        assert_eq!(lookup(HOSTS, "ip6-localhost"), Some("::1".parse().unwrap()));
    }

    #[test]
    fn comments_and_unknown_names_resolve_to_nothing() {
        assert_eq!(lookup(HOSTS, "payments"), None);
        assert_eq!(lookup(HOSTS, "the"), None);
        assert_eq!(lookup(HOSTS, "cat"), None);
        assert_eq!(lookup("", "catalog"), None);
    }

    #[test]
    fn ip_literals_keep_their_port() {
        assert_eq!(resolve("127.0.0.1:8080").unwrap(), "127.0.0.1:8080");
        assert_eq!(resolve("10.0.0.1").unwrap(), "10.0.0.1:80");
    }
}
