//! The guard against server-side request forgery: which URLs a subscription may name, and
//! which addresses a delivery may connect to.
//!
//! A subscription URL is checked when it is created (scheme, credentials, host allowlist, and
//! the address if it is a literal). Names are checked again at every connection, by the
//! resolver the delivery client uses: it refuses names that resolve to loopback, private,
//! link-local or other non-public addresses, and the client connects only to the addresses it
//! vetted — so a name that later resolves elsewhere (DNS rebinding) gains nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::Url;

/// Which subscription URLs are allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlGuard {
    /// Host patterns: `chain.example` (that host) or `*.chain.example` (its subdomains).
    /// Empty: any host with a public address.
    allowed_hosts: Vec<String>,
    /// Allows loopback and private addresses, and plain `http` to them: for development and
    /// tests.
    allow_private: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("not a URL: {0}")]
    Malformed(String),
    #[error("the URL must use https")]
    NotHttps,
    #[error("the URL must not carry credentials")]
    Credentials,
    #[error("host {0:?} is not in the webhook allowlist")]
    NotAllowed(String),
    #[error("{0} is not a public address; loopback and private addresses are refused unless the engine runs with --webhook-allow-private")]
    PrivateAddress(IpAddr),
    #[error(
        "{0:?} names this machine; refused unless the engine runs with --webhook-allow-private"
    )]
    Localhost(String),
}

impl UrlGuard {
    pub fn new(allowed_hosts: Vec<String>, allow_private: bool) -> Self {
        Self {
            allowed_hosts: allowed_hosts
                .into_iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            allow_private,
        }
    }

    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Checks a subscription URL; the returned URL is the one to store and call.
    pub fn check(&self, text: &str) -> Result<Url, UrlRefused> {
        let url = Url::parse(text).map_err(|e| UrlRefused::Malformed(e.to_string()))?;
        // Plain http only to this machine or a private network, and only when allowed: a
        // signed payload never crosses the internet in clear text.
        let local = match url.host() {
            Some(url::Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) => {
                let d = d.to_ascii_lowercase();
                d == "localhost" || d.ends_with(".localhost")
            }
            None => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private && local => {}
            _ => return Err(UrlRefused::NotHttps),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlRefused::Credentials);
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => {
                self.check_ip(IpAddr::V4(ip))?;
                ip.to_string()
            }
            Some(url::Host::Ipv6(ip)) => {
                self.check_ip(IpAddr::V6(ip))?;
                ip.to_string()
            }
            None => return Err(UrlRefused::Malformed("the URL has no host".into())),
        };
        if !self.allow_private && (host == "localhost" || host.ends_with(".localhost")) {
            return Err(UrlRefused::Localhost(host));
        }
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.iter().any(|p| matches(p, &host)) {
            return Err(UrlRefused::NotAllowed(host));
        }
        Ok(url)
    }

    /// Refuses an address that is not public, unless private addresses are allowed.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), UrlRefused> {
        if self.allow_private || is_public(ip) {
            Ok(())
        } else {
            Err(UrlRefused::PrivateAddress(ip))
        }
    }

    /// The resolver for the delivery client: it hands out only addresses this guard allows.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            guard: self.clone(),
        })
    }
}

fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => pattern == host,
    }
}

/// Whether an address is reachable on the public internet: not loopback, private, link-local,
/// shared, documentation, benchmarking, multicast, reserved or unspecified (RFC 6890).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space, RFC 6598
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, RFC 2544
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [.., hi, lo] = s;
        return is_public_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    // 6to4 (2002::/16) reaches the IPv4 address in its second and third segments.
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])));
    }
    // Teredo (2001::/32), local-use NAT64 (64:ff9b:1::/48), the discard prefix (100::/64),
    // site-local (fec0::/10) and SIIT (::ffff:0:0/96) can all lead to addresses that are not
    // public; a webhook has no business with them.
    if (s[0] == 0x2001 && s[1] == 0)
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0])
        || (s[0] & 0xffc0) == 0xfec0
        || (s[0..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0)
    {
        return false;
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible and the like
}

/// Resolves with the system resolver, then refuses the name if any address is not allowed.
pub struct GuardedResolver {
    guard: UrlGuard,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            for addr in &addrs {
                guard.check_ip(addr.ip())?;
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> UrlGuard {
        UrlGuard::new(vec![], false)
    }

    #[test]
    fn https_to_a_public_host_is_allowed() {
        assert!(strict()
            .check("https://hooks.chain.example/regulator")
            .is_ok());
        assert!(strict().check("https://93.184.216.34/hook").is_ok());
    }

    #[test]
    fn plain_http_and_credentials_are_refused() {
        assert_eq!(
            strict().check("http://hooks.example/x"),
            Err(UrlRefused::NotHttps)
        );
        assert_eq!(
            strict().check("ftp://hooks.example/x"),
            Err(UrlRefused::NotHttps)
        );
        assert_eq!(
            strict().check("https://user:pw@hooks.example/x"),
            Err(UrlRefused::Credentials)
        );
        assert!(matches!(
            strict().check("not a url"),
            Err(UrlRefused::Malformed(_))
        ));
    }

    #[test]
    fn loopback_private_and_metadata_addresses_are_refused() {
        for url in [
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://172.16.0.1/x",
            "https://192.168.1.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/x",
            "https://0.0.0.0/x",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://[64:ff9b::a00:1]/x",
            "https://[2002:a00:1::1]/x",
            "https://[2001:0:4136:e378::1]/x",
            "https://[fec0::1]/x",
            "https://[100::1]/x",
        ] {
            assert!(
                matches!(strict().check(url), Err(UrlRefused::PrivateAddress(_))),
                "{url}"
            );
        }
        assert!(matches!(
            strict().check("https://localhost:8443/x"),
            Err(UrlRefused::Localhost(_))
        ));
    }

    #[test]
    fn allowing_private_addresses_is_explicit() {
        let dev = UrlGuard::new(vec![], true);
        assert!(dev.check("http://127.0.0.1:9000/hook").is_ok());
        assert!(dev.check("http://localhost:9000/hook").is_ok());
        assert!(dev.check("http://10.0.0.7/hook").is_ok());
        // Even then, plain http never goes to a public host.
        assert_eq!(
            dev.check("http://hooks.example/x"),
            Err(UrlRefused::NotHttps)
        );
        assert_eq!(
            dev.check("http://93.184.216.34/x"),
            Err(UrlRefused::NotHttps)
        );
    }

    #[test]
    fn the_allowlist_limits_hosts() {
        let guard = UrlGuard::new(
            vec!["hooks.chain.example".into(), "*.eth.example".into()],
            false,
        );
        assert!(guard.check("https://hooks.chain.example/x").is_ok());
        assert!(guard.check("https://a.eth.example/x").is_ok());
        assert!(guard.check("https://a.b.eth.example/x").is_ok());
        assert_eq!(
            guard.check("https://eth.example/x"),
            Err(UrlRefused::NotAllowed("eth.example".into()))
        );
        assert_eq!(
            guard.check("https://evil-eth.example/x"),
            Err(UrlRefused::NotAllowed("evil-eth.example".into()))
        );
        assert!(guard.check("https://other.example/x").is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        let resolver = strict().resolver();
        let name: Name = "localhost".parse().unwrap();
        assert!(resolver.resolve(name).await.is_err());
        let dev = UrlGuard::new(vec![], true).resolver();
        let name: Name = "localhost".parse().unwrap();
        assert!(dev.resolve(name).await.is_ok());
    }
}
