//! The config file's YAML shape, exactly as users write it (camelCase keys, Istio and
//! Gateway API names). Unknown keys are refused; values that need checking carry their
//! line and column ([`Spanned`]) so [`super::config`] can say where a bad one is.

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigFile {
    /// Interface names or glob patterns (`*`, `?`). May be left out when every policy
    /// targets a Service: then the interfaces are the pods' that discovery finds.
    #[serde(default)]
    pub interfaces: Vec<Spanned<String>>,
    #[serde(default)]
    pub admin: Option<Admin>,
    pub policies: Vec<Spanned<PolicyEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Admin {
    pub address: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyEntry {
    pub name: Spanned<String>,
    pub target: Spanned<TargetEntry>,
    /// Where to capture a Service target: `server` (the default) or `client`.
    #[serde(default)]
    pub capture: Option<Spanned<CaptureEntry>>,
    /// The caller pods of `capture: client`.
    #[serde(default)]
    pub clients: Option<Spanned<ClientsEntry>>,
    #[serde(default)]
    pub matches: Vec<MatchEntry>,
    pub mirrors: Vec<Spanned<MirrorEntry>>,
    #[serde(default)]
    pub sampling: Option<Spanned<SamplingEntry>>,
    /// What the target's connections carry: `http` (the default), `tcp` (raw TCP mode) or
    /// `http2` (h2c with prior knowledge).
    #[serde(default)]
    pub protocol: Option<Spanned<ProtocolEntry>>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolEntry {
    Http,
    Tcp,
    Http2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetEntry {
    /// An address or a prefix (`10.96.0.0/16`, `fd00::/64`), with `port`; or `service`.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub service: Option<ServiceEntry>,
}

/// `target: {service: {name, namespace, port}}`: a Kubernetes Service (needs `--kubernetes`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntry {
    pub name: String,
    /// `default` when left out (a config file belongs to no namespace).
    #[serde(default)]
    pub namespace: Option<String>,
    pub port: ServicePortEntry,
}

/// A Service port by number or by name, as Kubernetes' int-or-string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ServicePortEntry {
    Number(u64),
    Name(String),
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CaptureEntry {
    Server,
    Client,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientsEntry {
    pub pod_selector: PodSelectorEntry,
}

/// A Kubernetes label selector.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSelectorEntry {
    #[serde(default)]
    pub match_labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<SelectorExpression>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SelectorExpression {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchEntry {
    #[serde(default)]
    pub path: Option<Spanned<PathEntry>>,
    #[serde(default)]
    pub method: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: Vec<Spanned<HeaderMatchEntry>>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum PathType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathEntry {
    /// Gateway API's default is PathPrefix.
    #[serde(rename = "type", default)]
    pub kind: PathType,
    pub value: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum ValueType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatchEntry {
    #[serde(rename = "type", default)]
    pub kind: ValueType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorEntry {
    /// `HOST:PORT`: a name (resolved at every connect) or an address.
    pub backend: String,
    #[serde(default)]
    pub percent: Option<f64>,
    #[serde(default)]
    pub fraction: Option<Fraction>,
    #[serde(default)]
    pub host_rewrite: Option<HostRewriteEntry>,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifierEntry>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fraction {
    pub numerator: u64,
    /// Gateway API's default denominator.
    #[serde(default = "hundred")]
    pub denominator: u64,
}

fn hundred() -> u64 {
    100
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostRewriteEntry {
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub keep: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifierEntry {
    #[serde(default)]
    pub set: Vec<Header>,
    #[serde(default)]
    pub add: Vec<Header>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ConsistentBy {
    Header,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SamplingEntry {
    pub consistent_by: ConsistentBy,
    pub header: String,
}
