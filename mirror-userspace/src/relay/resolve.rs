//! Where v2 is: the `HOST:PORT` it was given, checked, and its addresses. A name is looked up
//! at most once every [`REFRESH`] (one lookup at a time; connects in between reuse the last
//! answer), not at every connect: with Kubernetes' `ndots:5` one lookup can be ten DNS
//! queries. The system resolver does not report TTLs, so this is a fixed re-resolve interval
//! rather than a TTL cache. A failed lookup keeps the last good addresses.

use std::{
    io,
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{net::lookup_host, sync::Mutex};

/// How long a lookup's answer is used before the name is looked up again.
pub const REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShadowError {
    #[error("`{0}` has no port: write HOST:PORT, e.g. `v2.prod:8080` or `[fd00::2]:8080`")]
    NoPort(String),
    #[error("`{0}`: an IPv6 address goes in brackets, e.g. `[fd00::2]:8080`")]
    UnbracketedIpv6(String),
    #[error("`{0}` has no host: write HOST:PORT")]
    NoHost(String),
    #[error("`{0}`: the port must be a number from 1 to 65535")]
    BadPort(String),
}

/// v2's address as given: an address, or a name and port to look up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shadow {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl Shadow {
    /// Parses `HOST:PORT` (IPv6 in brackets).
    pub fn parse(text: &str) -> Result<Shadow, ShadowError> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(ShadowError::BadPort(text.to_owned()));
            }
            return Ok(Shadow::Addr(addr));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(ShadowError::NoPort(text.to_owned()));
        };
        if host.contains(':') || host.starts_with('[') {
            // `::1:80`, `fd00::2` or a bracketed address that did not parse.
            return Err(if host.starts_with('[') {
                ShadowError::BadPort(text.to_owned())
            } else {
                ShadowError::UnbracketedIpv6(text.to_owned())
            });
        }
        if host.is_empty() {
            return Err(ShadowError::NoHost(text.to_owned()));
        }
        match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Shadow::Name {
                host: host.to_owned(),
                port,
            }),
            _ => Err(ShadowError::BadPort(text.to_owned())),
        }
    }
}

/// Looks v2 up, through the cache.
#[derive(Debug)]
pub(super) struct Resolver {
    shadow: Result<Shadow, String>,
    cache: Mutex<Option<(Instant, Vec<SocketAddr>)>>,
}

impl Resolver {
    /// An unparseable `text` is kept and fails every lookup (the agent refuses it at start;
    /// this is for library callers).
    pub(super) fn new(text: &str) -> Resolver {
        Resolver {
            shadow: Shadow::parse(text).map_err(|_| text.to_owned()),
            cache: Mutex::new(None),
        }
    }

    /// v2's addresses; `Err` only if the name never resolved or its last lookup failed with
    /// nothing cached. `on_failure` is called for each failed lookup.
    pub(super) async fn addrs(
        &self,
        timeout: Duration,
        on_failure: impl FnOnce(),
    ) -> io::Result<Vec<SocketAddr>> {
        let (host, port) = match &self.shadow {
            Ok(Shadow::Addr(addr)) => return Ok(vec![*addr]),
            Ok(Shadow::Name { host, port }) => (host.as_str(), *port),
            Err(text) => {
                on_failure();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{text} is not HOST:PORT"),
                ));
            }
        };
        let mut cache = self.cache.lock().await;
        if let Some((at, addrs)) = cache.as_ref() {
            if at.elapsed() < REFRESH {
                return Ok(addrs.clone());
            }
        }
        let looked_up = tokio::time::timeout(timeout, lookup_host((host, port)))
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "lookup timed out")))
            .map(|addrs| addrs.collect::<Vec<_>>());
        match looked_up {
            Ok(addrs) if !addrs.is_empty() => {
                *cache = Some((Instant::now(), addrs.clone()));
                Ok(addrs)
            }
            other => {
                on_failure();
                let error = other.err().unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "resolved to nothing")
                });
                match cache.as_mut() {
                    // Keep what worked; try the name again after another interval.
                    Some((at, addrs)) => {
                        *at = Instant::now();
                        Ok(addrs.clone())
                    }
                    None => Err(error),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_names_and_says_what_is_wrong() {
        assert_eq!(
            Shadow::parse("10.0.0.2:8080"),
            Ok(Shadow::Addr("10.0.0.2:8080".parse().unwrap()))
        );
        assert_eq!(
            Shadow::parse("[fd00::2]:80"),
            Ok(Shadow::Addr("[fd00::2]:80".parse().unwrap()))
        );
        assert_eq!(
            Shadow::parse("v2.prod:8000"),
            Ok(Shadow::Name {
                host: "v2.prod".into(),
                port: 8000
            })
        );
        assert!(matches!(
            Shadow::parse("nohost"),
            Err(ShadowError::NoPort(_))
        ));
        assert!(matches!(
            Shadow::parse("fd00::2:80"),
            Err(ShadowError::UnbracketedIpv6(_))
        ));
        assert!(matches!(Shadow::parse(":80"), Err(ShadowError::NoHost(_))));
        for bad in ["v2:0", "v2:http", "v2:70000", "1.2.3.4:0", "[fd00::2]:x"] {
            assert!(
                matches!(Shadow::parse(bad), Err(ShadowError::BadPort(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_name_is_looked_up_once_per_interval() {
        let resolver = Resolver::new("localhost:8080");
        let mut failures = 0;
        let first = resolver
            .addrs(Duration::from_secs(5), || failures += 1)
            .await
            .unwrap();
        assert!(first
            .iter()
            .all(|a| a.port() == 8080 && a.ip().is_loopback()));
        let cached_at = resolver.cache.lock().await.as_ref().unwrap().0;
        resolver
            .addrs(Duration::from_secs(5), || failures += 1)
            .await
            .unwrap();
        assert_eq!(resolver.cache.lock().await.as_ref().unwrap().0, cached_at);
        assert_eq!(failures, 0);
    }

    #[tokio::test]
    async fn an_unparseable_shadow_fails_every_lookup_and_is_counted() {
        let resolver = Resolver::new("nohost");
        let mut failures = 0;
        let result = resolver
            .addrs(Duration::from_secs(5), || failures += 1)
            .await;
        assert!(result.is_err());
        assert_eq!(failures, 1);
    }
}
