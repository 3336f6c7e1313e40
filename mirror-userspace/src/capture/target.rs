//! `--target ADDR[/PREFIX]:PORT`: which destinations the kernel program captures.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use mirror_common::{TargetKey, FAMILY_IPV4, FAMILY_IPV6};

/// A destination prefix and port, e.g. `10.96.0.10:8000`, `10.96.0.0/16:80`,
/// `[fd00::10]:8000` or `[fd00::]/64:8000`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// The network address, host bits cleared.
    pub addr: IpAddr,
    pub prefix: u8,
    pub port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("target {0:?} has no port: write ADDR[/PREFIX]:PORT, IPv6 in brackets ([fd00::1]:80)")]
    MissingPort(String),
    #[error("target {0:?} has an invalid port (1-65535)")]
    BadPort(String),
    #[error("target {0:?} has an invalid address")]
    BadAddress(String),
    #[error("target {input:?} has prefix /{prefix}, longer than the address (max /{max})")]
    BadPrefix {
        input: String,
        prefix: String,
        max: u8,
    },
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (host, port) = input
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
            .ok_or_else(|| TargetError::MissingPort(input.to_owned()))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| TargetError::BadPort(input.to_owned()))?;
        // Accept `[v6]/64`, `[v6/64]` and `v4/24`.
        let unbracketed = host.replace(['[', ']'], "");
        if host.contains(':') && !host.starts_with('[') {
            return Err(TargetError::MissingPort(input.to_owned()));
        }
        let (addr, prefix) = match unbracketed.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (unbracketed.as_str(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| TargetError::BadAddress(input.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(text) => text
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| TargetError::BadPrefix {
                    input: input.to_owned(),
                    prefix: text.to_owned(),
                    max,
                })?,
        };
        Ok(Target {
            addr: mask(addr, prefix),
            prefix,
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(addr) if self.prefix == 32 => write!(f, "{addr}:{}", self.port),
            IpAddr::V4(addr) => write!(f, "{addr}/{}:{}", self.prefix, self.port),
            IpAddr::V6(addr) if self.prefix == 128 => write!(f, "[{addr}]:{}", self.port),
            IpAddr::V6(addr) => write!(f, "[{addr}]/{}:{}", self.prefix, self.port),
        }
    }
}

impl Target {
    /// The LPM trie key and prefix length that match this target.
    pub fn trie_key(&self) -> (u32, TargetKey) {
        let mut key = TargetKey {
            port: self.port.to_be_bytes(),
            ..TargetKey::default()
        };
        match self.addr {
            IpAddr::V4(addr) => {
                key.family = FAMILY_IPV4;
                key.addr[..4].copy_from_slice(&addr.octets());
            }
            IpAddr::V6(addr) => {
                key.family = FAMILY_IPV6;
                key.addr = addr.octets();
            }
        }
        (TargetKey::FIXED_BITS + u32::from(self.prefix), key)
    }

    /// Whether a destination falls inside this target (the same rule as the kernel's trie).
    pub fn contains(&self, addr: IpAddr, port: u16) -> bool {
        port == self.port
            && addr.is_ipv4() == self.addr.is_ipv4()
            && mask(addr, self.prefix) == self.addr
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(addr) => {
            let bits = u32::from(addr);
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & keep))
        }
        IpAddr::V6(addr) => {
            let bits = u128::from(addr);
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & keep))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let cases = [
            ("10.96.0.10:8000", "10.96.0.10:8000"),
            ("10.96.1.7/16:80", "10.96.0.0/16:80"),
            ("0.0.0.0/0:80", "0.0.0.0/0:80"),
            ("[fd00::10]:8000", "[fd00::10]:8000"),
            ("[fd00::1]/64:8000", "[fd00::]/64:8000"),
            ("[fd00::1/64]:8000", "[fd00::]/64:8000"),
            ("[::1]:80", "[::1]:80"),
        ];
        for (input, shown) in cases {
            let target: Target = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(target.to_string(), shown, "{input}");
        }
    }

    #[test]
    fn rejects_bad_targets() {
        for input in [
            "10.0.0.1",
            ":80",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:http",
            "10.0.0.300:80",
            "10.0.0.1/33:80",
            "[fd00::1]/129:80",
            "fd00::1:80",
            "httpbin:8000",
        ] {
            assert!(
                input.parse::<Target>().is_err(),
                "{input} should be rejected"
            );
        }
    }

    #[test]
    fn trie_key_prefix_covers_port_family_and_prefix() {
        let (bits, key) = "10.96.0.0/16:8000".parse::<Target>().unwrap().trie_key();
        assert_eq!(bits, 32 + 16);
        assert_eq!(key.port, 8000u16.to_be_bytes());
        assert_eq!(key.family, FAMILY_IPV4);
        assert_eq!(&key.addr[..4], &[10, 96, 0, 0]);
        let (bits, key) = "[fd00::]/64:80".parse::<Target>().unwrap().trie_key();
        assert_eq!(bits, 32 + 64);
        assert_eq!(key.family, FAMILY_IPV6);
    }

    #[test]
    fn contains_matches_prefix_and_port() {
        let target: Target = "10.96.0.0/16:80".parse().unwrap();
        assert!(target.contains("10.96.200.1".parse().unwrap(), 80));
        assert!(!target.contains("10.97.0.1".parse().unwrap(), 80));
        assert!(!target.contains("10.96.0.1".parse().unwrap(), 81));
        assert!(!target.contains("::ffff:10.96.0.1".parse().unwrap(), 80));
    }
}
