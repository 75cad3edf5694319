//! Where a webhook may be sent. A caller names the URL, and the service sends to it
//! from inside its own network, so an unchecked URL would let any key make the
//! service call its neighbours (metadata endpoints, databases, admin ports). A URL
//! is checked when a job is accepted (its form, and a literal address) and again on
//! every attempt, after resolving its host: the connection then goes to the address
//! that was checked, not to whatever the name resolves to a moment later.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("is not a URL: {0}")]
    Malformed(String),
    #[error("must be http or https, not {0:?}")]
    Scheme(String),
    #[error("must not carry credentials")]
    Credentials,
    #[error("has no host")]
    NoHost,
    #[error("is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("{host} is {ip}, not a public address (set server.webhooks.allow_private_networks to allow it)")]
    NotPublic { host: String, ip: IpAddr },
    #[error("{host} could not be resolved: {reason}")]
    Unresolved { host: String, reason: String },
}

const MAX_URL_LEN: usize = 2048;

/// A webhook URL in a form that may be sent to.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    pub url: url::Url,
}

impl WebhookTarget {
    /// Checks `text`'s form, and refuses a literal address that is not public (a name
    /// is checked when it is resolved, before each attempt).
    pub fn parse(text: &str, allow_private: bool) -> Result<WebhookTarget, TargetError> {
        if text.len() > MAX_URL_LEN {
            return Err(TargetError::TooLong);
        }
        let url = url::Url::parse(text).map_err(|e| TargetError::Malformed(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TargetError::Scheme(url.scheme().to_string()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Credentials);
        }
        let literal = match url.host() {
            None => return Err(TargetError::NoHost),
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
        };
        if let Some(ip) = literal {
            check(url.host_str().unwrap_or_default(), ip, allow_private)?;
        }
        Ok(WebhookTarget { url })
    }

    /// Resolves the host and checks every address it names; the first is where the
    /// attempt connects.
    pub async fn resolve(&self, allow_private: bool) -> Result<SocketAddr, TargetError> {
        let host = self.url.host_str().unwrap_or_default().to_string();
        let port = self.url.port_or_known_default().unwrap_or(443);
        // `host_str` keeps an IPv6 literal's brackets, which the resolver refuses.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| TargetError::Unresolved {
                host: host.clone(),
                reason: e.to_string(),
            })?
            .collect();
        for a in &addrs {
            check(&host, a.ip(), allow_private)?;
        }
        addrs.first().copied().ok_or(TargetError::Unresolved {
            host,
            reason: "no addresses".into(),
        })
    }
}

fn check(host: &str, ip: IpAddr, allow_private: bool) -> Result<(), TargetError> {
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(TargetError::NotPublic {
            host: host.to_string(),
            ip,
        })
    }
}

/// Globally routable unicast, by the IANA special-purpose registries.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
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
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24.
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking, 198.18.0.0/15.
        || (a == 198 && (b == 18 || b == 19))
        // Reserved, 240.0.0.0/4.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local fc00::/7, link-local fe80::/10, documentation 2001:db8::/32.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)
        // NAT64 64:ff9b::/96 can reach IPv4 private space through a translator.
        || (first == 0x0064 && ip.segments()[1] == 0xff9b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_http_urls_without_credentials_pass() {
        for ok in [
            "https://hooks.example.com/imagegate",
            "http://93.184.216.34:8080/x?y=1",
            "https://[2606:4700::1111]/",
        ] {
            WebhookTarget::parse(ok, false).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let refused = |text: &str| WebhookTarget::parse(text, false).unwrap_err();
        assert!(matches!(
            refused("ftp://example.com/"),
            TargetError::Scheme(_)
        ));
        assert!(matches!(refused("not a url"), TargetError::Malformed(_)));
        assert_eq!(
            refused("https://user:pw@example.com/"),
            TargetError::Credentials
        );
        for private in [
            "http://127.0.0.1:9/",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[::ffff:192.168.0.1]/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
        ] {
            assert!(
                matches!(refused(private), TargetError::NotPublic { .. }),
                "{private}"
            );
            WebhookTarget::parse(private, true).expect("allowed when configured");
        }
        assert_eq!(
            refused(&format!("https://example.com/{}", "a".repeat(3000))),
            TargetError::TooLong
        );
    }

    #[tokio::test]
    async fn a_name_is_checked_by_the_addresses_it_resolves_to() {
        let target = WebhookTarget::parse("http://localhost:9/hook", false)
            .expect("a name passes the form check");
        let refused = target.resolve(false).await.unwrap_err();
        assert!(
            matches!(refused, TargetError::NotPublic { ref host, .. } if host == "localhost"),
            "{refused}"
        );
        let addr = target.resolve(true).await.expect("allowed when configured");
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), 9);
    }
}
