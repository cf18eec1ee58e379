//! Remote image fetching with a server-side request forgery (SSRF) guard.
//!
//! A client-chosen URL must not let it reach the server's own network (cloud metadata at
//! 169.254.169.254, the pod network, localhost admin ports). The guard works at two levels:
//! - every DNS answer goes through [`GuardedResolver`], which drops non-public addresses, so the
//!   address checked is the address connected to (no check-then-resolve-again race, and
//!   redirects are resolved through it too);
//! - URLs with an IP literal (which skip DNS) and every redirect target are checked by
//!   [`UrlPolicy::check`] (scheme, allow-list, literal address).
//!
//! Proxies from the environment are ignored: with a proxy the guard would check the proxy,
//! not the target.

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect::{Action, Attempt, Policy};
use reqwest::Url;

use crate::config::HttpFetchConfig;
use crate::images::ImageError;
use crate::ServerError;

/// Whether `ip` is outside the public unicast space (RFC 6890 special-purpose registries).
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                   // "this network", 0.0.0.0
        || a == 10                           // private
        || a == 127                          // loopback
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254)            // link-local (cloud metadata lives here)
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 168)            // private
        || (a == 192 && b == 0 && c == 0)    // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)    // documentation
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113)  // documentation
        || a >= 224 // multicast, reserved, broadcast
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) embed an IPv4 destination.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_forbidden_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        return is_forbidden_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    s[0] == 0                                 // ::, ::1, IPv4-compatible and the rest of ::/16
        || (s[0] & 0xfe00) == 0xfc00          // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80          // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0          // site-local fec0::/10 (deprecated)
        || (s[0] & 0xff00) == 0xff00          // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
}

/// Which URLs may be fetched: scheme, host allow-list and literal addresses.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    allow_private: bool,
    /// Lower-cased; a leading `.` matches the domain and its subdomains.
    allowed_hosts: Vec<String>,
}

impl UrlPolicy {
    pub fn new(allow_private: bool, allowed_hosts: &[String]) -> Self {
        Self {
            allow_private,
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        }
    }

    pub fn check(&self, url: &Url) -> Result<(), ImageError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ImageError::UnsupportedScheme(
                url.scheme().to_owned(),
                " or an http(s) URL",
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| ImageError::InvalidUrl("the URL has no host".into()))?
            .to_ascii_lowercase();
        if !self.host_allowed(&host) {
            return Err(ImageError::HostNotAllowed(host));
        }
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if !self.allow_private && is_forbidden(ip) {
                return Err(ImageError::ForbiddenAddress(host));
            }
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.allowed_hosts.is_empty()
            || self
                .allowed_hosts
                .iter()
                .any(|allowed| match allowed.strip_prefix('.') {
                    Some(domain) => {
                        host == domain
                            || host
                                .strip_suffix(domain)
                                .is_some_and(|rest| rest.ends_with('.'))
                    }
                    None => host == allowed,
                })
    }
}

/// A refusal carried through reqwest's error chain, so it can be reported precisely.
#[derive(Debug)]
struct Refused(ImageError);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for Refused {}

/// The system resolver, minus every non-public address unless private targets are allowed.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl GuardedResolver {
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }

    /// Resolves `host`, keeping only the addresses this server may connect to.
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, ImageError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| ImageError::Fetch(format!("cannot resolve '{host}': {e}")))?
            .collect();
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| self.allow_private || !is_forbidden(a.ip()))
            .collect();
        if allowed.is_empty() {
            return Err(if addrs.is_empty() {
                ImageError::Fetch(format!("'{host}' has no addresses"))
            } else {
                ImageError::ForbiddenAddress(host.to_owned())
            });
        }
        Ok(allowed)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this
                .lookup(name.as_str())
                .await
                .map_err(|e| Box::new(Refused(e)) as Box<dyn StdError + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Downloads images over http(s) within the configured limits.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    policy: Arc<UrlPolicy>,
    max_bytes: usize,
    max_redirects: usize,
}

impl HttpFetcher {
    pub fn new(config: &HttpFetchConfig, max_bytes: usize) -> Result<Self, ServerError> {
        let policy = Arc::new(UrlPolicy::new(config.allow_private, &config.allowed_hosts));
        let redirect_policy = {
            let policy = Arc::clone(&policy);
            let max = config.max_redirects;
            Policy::custom(move |attempt: Attempt| -> Action {
                if attempt.previous().len() > max {
                    return attempt.error(Refused(ImageError::TooManyRedirects(max)));
                }
                match policy.check(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(Refused(e)),
                }
            })
        };
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(redirect_policy)
            .dns_resolver(Arc::new(GuardedResolver::new(config.allow_private)))
            .no_proxy()
            .user_agent(concat!("grain/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ServerError::HttpClient(e.to_string()))?;
        Ok(Self {
            client,
            policy,
            max_bytes,
            max_redirects: config.max_redirects,
        })
    }

    /// Downloads `url`, refusing bodies over the byte limit as they stream in.
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, ImageError> {
        let parsed = Url::parse(url).map_err(|e| ImageError::InvalidUrl(e.to_string()))?;
        self.policy.check(&parsed)?;
        let mut response = self
            .client
            .get(parsed)
            .send()
            .await
            .map_err(|e| self.classify(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ImageError::FetchStatus(status.as_u16()));
        }
        if let Some(len) = response.content_length() {
            if len > self.max_bytes as u64 {
                return Err(ImageError::TooLarge {
                    size: usize::try_from(len).unwrap_or(usize::MAX),
                    limit: self.max_bytes,
                });
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(&e))? {
            if body.len() + chunk.len() > self.max_bytes {
                return Err(ImageError::TooLarge {
                    size: body.len() + chunk.len(),
                    limit: self.max_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn classify(&self, err: &reqwest::Error) -> ImageError {
        let mut source: Option<&(dyn StdError + 'static)> = err.source();
        while let Some(e) = source {
            if let Some(Refused(inner)) = e.downcast_ref::<Refused>() {
                return inner.clone();
            }
            source = e.source();
        }
        if err.is_timeout() {
            ImageError::Timeout
        } else if err.is_redirect() {
            ImageError::TooManyRedirects(self.max_redirects)
        } else if err.is_connect() {
            ImageError::Fetch("could not connect to the image host".into())
        } else {
            // reqwest's messages name only the URL the client gave, nothing internal.
            ImageError::Fetch(err.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(s: &str) -> bool {
        is_forbidden(s.parse().unwrap())
    }

    #[test]
    fn special_purpose_v4_ranges_are_forbidden() {
        // One address inside and just outside each range of the RFC 6890 IPv4 table.
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert!(!forbidden(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn special_purpose_v6_ranges_are_forbidden() {
        for ip in [
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
            "::127.0.0.1",
        ] {
            assert!(forbidden(ip), "{ip} should be forbidden");
        }
        for ip in [
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert!(!forbidden(ip), "{ip} should be allowed");
        }
    }

    #[test]
    fn url_policy_checks_scheme_allow_list_and_literals() {
        let open = UrlPolicy::new(false, &[]);
        assert!(open
            .check(&Url::parse("https://example.com/a.png").unwrap())
            .is_ok());
        assert_eq!(
            open.check(&Url::parse("http://127.0.0.1:8080/a.png").unwrap()),
            Err(ImageError::ForbiddenAddress("127.0.0.1".into()))
        );
        assert!(matches!(
            open.check(&Url::parse("http://[::1]/a.png").unwrap()),
            Err(ImageError::ForbiddenAddress(_))
        ));
        assert!(matches!(
            open.check(&Url::parse("file:///etc/passwd").unwrap()),
            Err(ImageError::UnsupportedScheme(s, _)) if s == "file"
        ));
        let listed = UrlPolicy::new(true, &[".example.com".into(), "cdn.test".into()]);
        for ok in [
            "https://example.com/x",
            "https://img.example.com/x",
            "http://CDN.test/x",
        ] {
            assert!(listed.check(&Url::parse(ok).unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "https://badexample.com/x",
            "https://cdn.test.evil/x",
            "http://127.0.0.1/x",
        ] {
            assert!(
                matches!(
                    listed.check(&Url::parse(bad).unwrap()),
                    Err(ImageError::HostNotAllowed(_))
                ),
                "{bad}"
            );
        }
        // Private targets are fine when explicitly allowed.
        assert!(UrlPolicy::new(true, &[])
            .check(&Url::parse("http://127.0.0.1/x").unwrap())
            .is_ok());
    }

    #[tokio::test]
    async fn resolver_drops_loopback_answers() {
        let guarded = GuardedResolver::new(false);
        assert_eq!(
            guarded.lookup("localhost").await,
            Err(ImageError::ForbiddenAddress("localhost".into()))
        );
        let open = GuardedResolver::new(true);
        let addrs = open.lookup("localhost").await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
