//! The validated config: the file's entries checked and compiled into the policy core's
//! values. Anything wrong is refused with the key and its line and column.

use std::{fmt, net::SocketAddr, path::Path};

use mirror_cores::{
    policy::{
        anchored, is_token, HeaderMatch, HeaderModifier, MirrorRewrite, MirrorRule, PathMatch,
        Policy, RequestMatch, Sampling, Share, ValueMatch,
    },
    rewrite::HostRewrite,
};
use serde_saphyr::Spanned;

use super::{
    file::{
        ConfigFile, ConsistentBy, HeaderMatchEntry, HostRewriteEntry, MatchEntry, MirrorEntry,
        PathEntry, PathType, PolicyEntry, ProtocolEntry, SamplingEntry, TargetEntry, ValueType,
    },
    service,
};
use crate::capture::target::Target;

/// Larger files are refused: a config is a few KiB, and reading is repeated on every change.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A config file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: String },
    /// Unknown key, wrong type, missing field: serde-saphyr's message names the key and
    /// gives the line and column.
    #[error("{path}: {source}")]
    Yaml {
        path: String,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        path: String,
        line: u64,
        column: u64,
        key: &'static str,
        message: String,
    },
}

impl ConfigError {
    /// The line the error points at, if it has one.
    pub fn line(&self) -> Option<u64> {
        match self {
            ConfigError::Invalid { line, .. } => Some(*line),
            ConfigError::Yaml { source, .. } => source.location().map(|l| l.line()),
            _ => None,
        }
    }
}

/// Everything `mirror run` is told: by the file, or by the flags (one policy, one mirror).
#[derive(Clone, Debug)]
pub struct MirrorConfig {
    /// Names or glob patterns.
    pub interfaces: Vec<String>,
    pub admin: Option<SocketAddr>,
    pub policies: Vec<PolicyConfig>,
}

impl MirrorConfig {
    /// What the kernel must capture: every policy's target (a Service's as discovered).
    pub fn capture_targets(&self) -> std::collections::BTreeSet<Target> {
        let discovered = self.policies.iter().flat_map(|p| p.discovered.iter());
        self.policies
            .iter()
            .filter_map(|p| p.target)
            .chain(discovered.copied())
            .collect()
    }
}

/// One policy: the destination it covers, and its mirrors.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub name: String,
    /// `None`: every captured destination (the flags' single policy), or a Service target's
    /// (then `service` says which, and `discovered` holds what was found).
    pub target: Option<Target>,
    /// `target: {service: ...}`: the Service and where to capture it (`--kubernetes`).
    pub service: Option<mirror_discovery::ServicePolicy>,
    /// A Service target's destinations on this node as discovery last found them (empty in
    /// a file just parsed; `mirror run --kubernetes` fills them in).
    pub discovered: Vec<Target>,
    pub policy: Policy,
    /// `policy.mirrors[i]` sends to `backends[i]`.
    pub backends: Vec<String>,
    /// The match entries as the file wrote them, for printing.
    pub match_text: Vec<String>,
    pub protocol: Protocol,
}

/// What a policy's connections carry, hence how they are mirrored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 requests, framed, sampled and rewritten one by one.
    #[default]
    Http,
    /// Raw TCP mode: each connection's bytes, as they are, to a connection of its own to
    /// each mirror that takes it (sampling per connection; nothing is rewritten).
    Tcp,
    /// h2c with prior knowledge: each connection followed from its preface, each stream
    /// matched, sampled and rewritten as an HTTP/1 request is (`:method`, `:path`, fields;
    /// `hostRewrite` on `:authority`) and replayed on an HTTP/2 connection to the mirror.
    Http2,
}

impl Protocol {
    /// Whether the pipeline hands this protocol's connections on as byte streams.
    pub fn is_stream(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Http2)
    }
}

impl PolicyConfig {
    /// The destinations whose flows are this policy's.
    pub fn scope(&self) -> Scope {
        match (&self.service, self.target) {
            (Some(_), _) => Scope::Some(self.discovered.clone()),
            (None, Some(target)) => Scope::Some(vec![target]),
            (None, None) => Scope::Every,
        }
    }

    /// The label of mirror `i` in counters: `policy/backend`, unique within a config.
    pub fn mirror_label(&self, i: usize) -> String {
        format!("{}/{}", self.name, self.backends[i])
    }
}

/// The destinations a policy covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Every,
    /// These (a Service's: none until discovery finds its pods).
    Some(Vec<Target>),
}

impl Scope {
    pub fn contains(&self, addr: std::net::IpAddr, port: u16) -> bool {
        match self {
            Scope::Every => true,
            Scope::Some(targets) => targets.iter().any(|t| t.contains(addr, port)),
        }
    }
}

/// Where a value was written, for errors.
#[derive(Clone, Copy, Debug)]
pub(super) struct At {
    pub(super) line: u64,
    pub(super) column: u64,
}

impl<T> From<&Spanned<T>> for At {
    fn from(s: &Spanned<T>) -> Self {
        At {
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }
}

/// Builds errors that carry the file's path.
struct Check<'p> {
    path: &'p str,
}

impl Check<'_> {
    fn invalid(&self, at: At, key: &'static str, message: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: at.line,
            column: at.column,
            key,
            message: message.to_string(),
        }
    }
}

/// Reads and validates the file at `path` (symlinks followed, as a ConfigMap mount needs).
pub fn load(path: &Path) -> Result<MirrorConfig, ConfigError> {
    parse(&read_capped(path)?, &path.display().to_string())
}

/// The file's text, refusing more than [`MAX_FILE_BYTES`].
pub fn read_capped(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let read = |source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.display().to_string(),
        });
    }
    Ok(text)
}

/// Validates a config file's text; `path` only labels errors.
pub fn parse(text: &str, path: &str) -> Result<MirrorConfig, ConfigError> {
    let file: ConfigFile = serde_saphyr::from_str(text).map_err(|source| ConfigError::Yaml {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    let check = Check { path };
    let mut policies: Vec<PolicyConfig> = Vec::new();
    for entry in &file.policies {
        let policy = build_policy(&check, entry)?;
        if policies.iter().any(|p| p.name == policy.name) {
            return Err(check.invalid(
                At::from(&entry.value.name),
                "name",
                "policy name used twice",
            ));
        }
        policies.push(policy);
    }
    if policies.is_empty() {
        return Err(check.invalid(At { line: 1, column: 1 }, "policies", "no policies"));
    }
    let interfaces: Vec<String> = file.interfaces.iter().map(|i| i.value.clone()).collect();
    if let Some(bad) = file.interfaces.iter().find(|i| i.value.is_empty()) {
        return Err(check.invalid(At::from(bad), "interfaces", "empty interface name"));
    }
    if interfaces.is_empty() && policies.iter().any(|p| p.service.is_none()) {
        return Err(check.invalid(
            At { line: 1, column: 1 },
            "interfaces",
            "no interfaces (only policies whose target is a Service may go without)",
        ));
    }
    let admin = match &file.admin {
        None => None,
        Some(admin) => Some(admin.address.value.parse().map_err(|_| {
            check.invalid(
                At::from(&admin.address),
                "address",
                format!("{:?} is not ADDRESS:PORT", admin.address.value),
            )
        })?),
    };
    Ok(MirrorConfig {
        interfaces,
        admin,
        policies,
    })
}

/// One policy alone, as a config file's `policies:` entry (a `MirrorPolicy` object's spec
/// with its name: JSON is YAML); `path` only labels errors.
pub fn parse_policy(text: &str, path: &str) -> Result<PolicyConfig, ConfigError> {
    let entry: Spanned<PolicyEntry> =
        serde_saphyr::from_str(text).map_err(|source| ConfigError::Yaml {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    build_policy(&Check { path }, &entry)
}

fn build_policy(
    check: &Check<'_>,
    entry: &Spanned<PolicyEntry>,
) -> Result<PolicyConfig, ConfigError> {
    let p = &entry.value;
    if p.name.value.is_empty() || p.name.value.contains(char::is_whitespace) {
        return Err(check.invalid(At::from(&p.name), "name", "a policy name is one word"));
    }
    let at_target = At::from(&p.target);
    let (target, service) = match &p.target.value {
        TargetEntry {
            service: Some(entry),
            address: None,
            port: None,
        } => {
            let policy = service::build(&p.name.value, entry, &p.capture, &p.clients)
                .map_err(|(at, key, e)| check.invalid(at.unwrap_or(at_target), key, e))?;
            (None, Some(policy))
        }
        TargetEntry {
            service: None,
            address: Some(address),
            port: Some(port),
        } => {
            if let Some((at, key)) = service::only_for_services(&p.capture, &p.clients) {
                return Err(check.invalid(at, key, "only a Service target takes it"));
            }
            let target =
                build_target(address, *port).map_err(|e| check.invalid(at_target, "target", e))?;
            (Some(target), None)
        }
        TargetEntry {
            service: Some(_), ..
        } => {
            return Err(check.invalid(
                at_target,
                "target",
                "give address and port, or service (whose port is inside it), not both",
            ))
        }
        TargetEntry { address: None, .. } => {
            return Err(check.invalid(
                at_target,
                "target",
                "needs address and port, or service: {name, namespace, port}",
            ))
        }
        TargetEntry { port: None, .. } => {
            return Err(check.invalid(at_target, "port", "an address target needs a port"))
        }
    };
    let mut matches = Vec::new();
    let mut match_text = Vec::new();
    for m in &p.matches {
        let (built, text) = build_match(check, m)?;
        matches.push(built);
        match_text.push(text);
    }
    if p.mirrors.is_empty() {
        return Err(check.invalid(
            At::from(entry),
            "mirrors",
            "a policy needs at least one mirror",
        ));
    }
    let mut mirrors = Vec::new();
    let mut backends: Vec<String> = Vec::new();
    for m in &p.mirrors {
        let (rule, backend) = build_mirror(check, m)?;
        if backends.contains(&backend) {
            return Err(check.invalid(
                At::from(m),
                "backend",
                "backend listed twice in one policy",
            ));
        }
        mirrors.push(rule);
        backends.push(backend);
    }
    let sampling = match &p.sampling {
        None => Sampling::Independent,
        Some(s) => build_sampling(check, s)?,
    };
    let protocol = match &p.protocol {
        None => Protocol::Http,
        Some(proto) if proto.value == ProtocolEntry::Http => Protocol::Http,
        Some(proto) if proto.value == ProtocolEntry::Http2 => {
            for (m, rule) in p.mirrors.iter().zip(&mirrors) {
                if let Some(name) = mirror_cores::http2::forbidden_field(&rule.rewrite.headers) {
                    return Err(check.invalid(
                        At::from(m),
                        "requestHeaderModifier",
                        format!(
                            "{name:?} is a connection-specific field, which an HTTP/2 request \
                             must not carry (RFC 9113 section 8.2.2)"
                        ),
                    ));
                }
            }
            Protocol::Http2
        }
        Some(proto) => {
            check_raw_tcp(p).map_err(|key| {
                check.invalid(
                    At::from(proto),
                    key,
                    "a protocol: tcp policy has no requests to match, sample by header or \
                     rewrite: connections are mirrored whole, as they are",
                )
            })?;
            Protocol::Tcp
        }
    };
    Ok(PolicyConfig {
        name: p.name.value.clone(),
        target,
        service,
        discovered: Vec::new(),
        policy: Policy {
            matches,
            sampling,
            mirrors,
        },
        backends,
        match_text,
        protocol,
    })
}

/// A raw TCP policy's connections carry no HTTP: it may say only how much to mirror where.
/// Returns the key that is out of place.
fn check_raw_tcp(p: &PolicyEntry) -> Result<(), &'static str> {
    if !p.matches.is_empty() {
        return Err("matches");
    }
    if p.sampling.is_some() {
        return Err("sampling");
    }
    for m in &p.mirrors {
        if m.value.host_rewrite.is_some() {
            return Err("hostRewrite");
        }
        if m.value.request_header_modifier.is_some() {
            return Err("requestHeaderModifier");
        }
    }
    Ok(())
}

fn build_target(address: &str, port: u16) -> Result<Target, String> {
    let address = if address.contains(':') && !address.starts_with('[') {
        // IPv6, possibly with a prefix: bracket the address part.
        match address.split_once('/') {
            Some((addr, prefix)) => format!("[{addr}]/{prefix}"),
            None => format!("[{address}]"),
        }
    } else {
        address.to_owned()
    };
    format!("{address}:{port}")
        .parse::<Target>()
        .map_err(|e| e.to_string())
}

fn build_match(check: &Check<'_>, m: &MatchEntry) -> Result<(RequestMatch, String), ConfigError> {
    let mut text = Vec::new();
    let path = match &m.path {
        None => None,
        Some(path) => {
            let PathEntry { kind, value } = &path.value;
            text.push(format!("path {kind:?} {value}"));
            let built = match kind {
                PathType::Exact => PathMatch::exact(value),
                PathType::PathPrefix => PathMatch::prefix(value),
                PathType::RegularExpression => PathMatch::regex(value),
            };
            Some(built.map_err(|e| check.invalid(At::from(path), "path", e))?)
        }
    };
    let method = match &m.method {
        None => None,
        Some(method) => {
            if !is_token(&method.value) {
                return Err(check.invalid(At::from(method), "method", "not an HTTP method token"));
            }
            text.push(format!("method {}", method.value));
            Some(method.value.clone())
        }
    };
    let mut headers = Vec::new();
    for h in &m.headers {
        let HeaderMatchEntry { kind, name, value } = &h.value;
        let value_match = match kind {
            ValueType::Exact => ValueMatch::Exact(value.clone()),
            ValueType::RegularExpression => ValueMatch::Regex(
                anchored(value).map_err(|e| check.invalid(At::from(h), "headers", e))?,
            ),
        };
        headers.push(
            HeaderMatch::new(name, value_match)
                .map_err(|e| check.invalid(At::from(h), "headers", e))?,
        );
        text.push(format!("header {name} {kind:?} {value}"));
    }
    let text = if text.is_empty() {
        "every request".to_owned()
    } else {
        text.join(", ")
    };
    Ok((
        RequestMatch {
            path,
            method,
            headers,
        },
        text,
    ))
}

fn build_mirror(
    check: &Check<'_>,
    m: &Spanned<MirrorEntry>,
) -> Result<(MirrorRule, String), ConfigError> {
    let at = At::from(m);
    let e = &m.value;
    let port_ok = |port: &str| port.parse::<u16>().is_ok_and(|p| p != 0);
    if e.backend
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || !port_ok(port))
    {
        return Err(check.invalid(at, "backend", format!("{:?} is not HOST:PORT", e.backend)));
    }
    let share = match (e.percent, e.fraction) {
        (Some(_), Some(_)) => {
            return Err(check.invalid(at, "percent", "give percent or fraction, not both"))
        }
        (Some(p), None) => Share::percent(p).map_err(|err| check.invalid(at, "percent", err))?,
        (None, Some(f)) => Share::fraction(f.numerator, f.denominator)
            .map_err(|err| check.invalid(at, "fraction", err))?,
        // Gateway API mirrors everything when neither is given.
        (None, None) => Share::ALL,
    };
    let host = build_host_rewrite(e.host_rewrite.as_ref())
        .map_err(|msg| check.invalid(at, "hostRewrite", msg))?;
    let headers = match &e.request_header_modifier {
        None => HeaderModifier::default(),
        Some(h) => HeaderModifier::new(
            h.set
                .iter()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect(),
            h.add
                .iter()
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect(),
            h.remove.clone(),
        )
        .map_err(|err| check.invalid(at, "requestHeaderModifier", err))?,
    };
    let rewrite = MirrorRewrite { host, headers };
    rewrite
        .validate()
        .map_err(|err| check.invalid(at, "hostRewrite", err))?;
    Ok((MirrorRule { share, rewrite }, e.backend.clone()))
}

fn build_host_rewrite(entry: Option<&HostRewriteEntry>) -> Result<HostRewrite, String> {
    let Some(h) = entry else {
        return Ok(HostRewrite::default());
    };
    match (&h.suffix, &h.host, h.keep) {
        (Some(suffix), None, None | Some(false)) => Ok(HostRewrite::Suffix(suffix.clone())),
        (None, Some(host), None | Some(false)) => Ok(HostRewrite::Fixed(host.clone())),
        (None, None, Some(true)) => Ok(HostRewrite::Keep),
        (None, None, None | Some(false)) => Ok(HostRewrite::default()),
        _ => Err("give one of suffix, host or keep: true".to_owned()),
    }
}

fn build_sampling(check: &Check<'_>, s: &Spanned<SamplingEntry>) -> Result<Sampling, ConfigError> {
    let header = &s.value.header;
    let ConsistentBy::Header = s.value.consistent_by;
    if !is_token(header) {
        return Err(check.invalid(
            At::from(s),
            "header",
            format!("{header:?} is not a header name"),
        ));
    }
    Ok(Sampling::ConsistentBy {
        header: header.clone(),
    })
}

// === impl Display (the effective policies, as `mirror config check` prints them) ===

impl fmt::Display for MirrorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.interfaces.is_empty() {
            writeln!(f, "interfaces: the Service targets' pods")?;
        } else {
            writeln!(f, "interfaces: {}", self.interfaces.join(", "))?;
        }
        if let Some(admin) = self.admin {
            writeln!(f, "admin: {admin}")?;
        }
        for p in &self.policies {
            let target = match (&p.service, p.target) {
                (Some(s), _) => service::describe(s),
                (None, Some(t)) => t.to_string(),
                (None, None) => "every captured destination".to_owned(),
            };
            writeln!(f, "policy {} -> {target}", p.name)?;
            if p.protocol == Protocol::Http2 {
                writeln!(
                    f,
                    "  protocol: http2 (h2c, each stream matched, sampled and rewritten as a request)"
                )?;
            }
            if p.protocol == Protocol::Tcp {
                writeln!(f, "  protocol: tcp (each connection's bytes, as they are)")?;
                for (rule, backend) in p.policy.mirrors.iter().zip(&p.backends) {
                    let percent = rule.share.as_percent();
                    writeln!(f, "  mirror {backend}: {percent}% of connections")?;
                }
                continue;
            }
            if p.match_text.is_empty() {
                writeln!(f, "  matches: every request")?;
            }
            for m in &p.match_text {
                writeln!(f, "  match: {m}")?;
            }
            if let Sampling::ConsistentBy { header } = &p.policy.sampling {
                writeln!(f, "  sampling: consistent by header {header}")?;
            }
            for (rule, backend) in p.policy.mirrors.iter().zip(&p.backends) {
                let host = match &rule.rewrite.host {
                    HostRewrite::Suffix(s) => format!("suffix {s}"),
                    HostRewrite::Fixed(h) => format!("host {h}"),
                    HostRewrite::Keep => "keep".to_owned(),
                };
                writeln!(
                    f,
                    "  mirror {backend}: {}% host {host}",
                    rule.share.as_percent()
                )?;
                let h = &rule.rewrite.headers;
                for (name, value) in h.set() {
                    writeln!(f, "    set {name}: {value}")?;
                }
                for (name, value) in h.add() {
                    writeln!(f, "    add {name}: {value}")?;
                }
                for name in h.remove() {
                    writeln!(f, "    remove {name}")?;
                }
            }
        }
        Ok(())
    }
}
