//! `mirror config from-istio`: Istio VirtualService mirroring (`mirror`, `mirrorPercentage`,
//! `mirrors`) and Gateway API HTTPRoute `RequestMirror` filters turned into this agent's
//! config file. The objects name services, not addresses: the target address comes from the
//! caller, and what cannot be carried over (subsets, Istio's non-element-wise prefixes) is
//! reported as a note.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::file::{Fraction, PathType, ValueType};

/// Written where the service's address belongs when the caller gave none.
pub const ADDRESS_PLACEHOLDER: &str = "SERVICE-ADDRESS";

#[derive(Debug, thiserror::Error)]
pub enum IstioError {
    #[error("not YAML objects: {0}")]
    Yaml(#[source] Box<serde_saphyr::Error>),
    #[error("writing YAML failed: {0}")]
    Write(String),
    #[error("no VirtualService or HTTPRoute with mirroring found")]
    NothingToMirror,
}

// === What is read (only the fields used; the rest of each object is ignored) ===

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Object {
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Metadata {
    name: String,
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Spec {
    /// VirtualService.
    http: Vec<HttpRoute>,
    /// HTTPRoute.
    rules: Vec<RouteRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct HttpRoute {
    #[serde(rename = "match")]
    matches: Vec<IstioMatch>,
    route: Vec<RouteDestination>,
    mirror: Option<Destination>,
    mirror_percentage: Option<Percentage>,
    mirrors: Vec<MirrorPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RouteDestination {
    destination: Destination,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Destination {
    host: String,
    subset: Option<String>,
    port: Option<PortSelector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PortSelector {
    number: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Percentage {
    value: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MirrorPolicy {
    destination: Destination,
    percentage: Option<Percentage>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct IstioMatch {
    uri: Option<StringMatch>,
    method: Option<StringMatch>,
    headers: BTreeMap<String, StringMatch>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RouteRule {
    matches: Vec<GatewayMatch>,
    filters: Vec<Filter>,
    #[serde(rename = "backendRefs")]
    backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
struct GatewayMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<OutPath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    headers: Vec<OutHeaderMatch>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Filter {
    #[serde(rename = "type")]
    kind: String,
    request_mirror: Option<RequestMirror>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct RequestMirror {
    backend_ref: BackendRef,
    percent: Option<f64>,
    fraction: Option<Fraction>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BackendRef {
    name: String,
    namespace: Option<String>,
    port: Option<u16>,
}

// === What is written: the config file's shape ===

#[derive(Debug, Serialize)]
struct OutFile {
    interfaces: Vec<String>,
    policies: Vec<OutPolicy>,
}

#[derive(Debug, Serialize)]
struct OutPolicy {
    name: String,
    target: OutTarget,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    matches: Vec<GatewayMatch>,
    mirrors: Vec<OutMirror>,
}

impl OutPolicy {
    /// One converted rule: the policy on `address:port` (the route's own destination).
    fn new(
        name: String,
        address: &str,
        port: u16,
        matches: Vec<GatewayMatch>,
        mirrors: Vec<OutMirror>,
    ) -> OutPolicy {
        OutPolicy {
            name,
            target: OutTarget {
                address: address.to_owned(),
                port,
            },
            matches,
            mirrors,
        }
    }
}

#[derive(Debug, Serialize)]
struct OutTarget {
    address: String,
    port: u16,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
struct OutPath {
    #[serde(rename = "type")]
    kind: PathType,
    value: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
struct OutHeaderMatch {
    #[serde(rename = "type")]
    kind: ValueType,
    name: String,
    value: String,
}

#[derive(Debug, Serialize)]
struct OutMirror {
    backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fraction: Option<Fraction>,
}

/// The converted config file and the notes on what did not carry over.
#[derive(Debug)]
pub struct Converted {
    pub yaml: String,
    pub notes: Vec<String>,
}

/// Converts every VirtualService and HTTPRoute (documents separated by `---`) in `text`.
/// `address` is the services' address or prefix; `interfaces` the capture interfaces.
pub fn convert(
    text: &str,
    address: Option<&str>,
    interfaces: &[String],
) -> Result<Converted, IstioError> {
    let objects: Vec<Object> =
        serde_saphyr::from_multiple(text).map_err(|e| IstioError::Yaml(Box::new(e)))?;
    let mut notes = Vec::new();
    let address = address.unwrap_or_else(|| {
        notes.push(format!(
            "replace {ADDRESS_PLACEHOLDER} with the primary service's address (its ClusterIP, \
             or a prefix covering its pods)"
        ));
        ADDRESS_PLACEHOLDER
    });
    let mut policies = Vec::new();
    for object in &objects {
        match object.kind.as_str() {
            "VirtualService" => from_virtual_service(object, address, &mut policies, &mut notes),
            "HTTPRoute" => from_http_route(object, address, &mut policies, &mut notes),
            _ => {}
        }
    }
    if policies.is_empty() {
        return Err(IstioError::NothingToMirror);
    }
    let file = OutFile {
        interfaces: if interfaces.is_empty() {
            vec!["veth*".to_owned()]
        } else {
            interfaces.to_vec()
        },
        policies,
    };
    let yaml = serde_saphyr::to_string(&file).map_err(|e| IstioError::Write(e.to_string()))?;
    Ok(Converted { yaml, notes })
}

fn policy_name(meta: &Metadata, index: usize, count: usize) -> String {
    if count > 1 {
        format!("{}-{index}", meta.name)
    } else {
        meta.name.clone()
    }
}

fn from_virtual_service(
    o: &Object,
    address: &str,
    out: &mut Vec<OutPolicy>,
    notes: &mut Vec<String>,
) {
    let mirrored: Vec<&HttpRoute> = o
        .spec
        .http
        .iter()
        .filter(|r| r.mirror.is_some() || !r.mirrors.is_empty())
        .collect();
    for (i, route) in mirrored.iter().enumerate() {
        let name = policy_name(&o.metadata, i, mirrored.len());
        let port = route
            .route
            .first()
            .and_then(|r| r.destination.port.as_ref())
            .map_or(80, |p| p.number);
        let mut mirrors = Vec::new();
        if let Some(dest) = &route.mirror {
            let percent = route.mirror_percentage.as_ref().map(|p| p.value);
            mirrors.push(istio_mirror(&name, dest, port, percent, notes));
        }
        for m in &route.mirrors {
            let percent = m.percentage.as_ref().map(|p| p.value);
            mirrors.push(istio_mirror(&name, &m.destination, port, percent, notes));
        }
        let matches = route
            .matches
            .iter()
            .map(|m| istio_match(&name, m, notes))
            .collect();
        out.push(OutPolicy::new(name, address, port, matches, mirrors));
    }
}

fn istio_mirror(
    policy: &str,
    d: &Destination,
    port: u16,
    percent: Option<f64>,
    notes: &mut Vec<String>,
) -> OutMirror {
    if let Some(subset) = &d.subset {
        notes.push(format!(
            "{policy}: mirror to subset {subset:?} of {}: the backend is the service name; \
             point it at a name or address that reaches only that subset's pods",
            d.host
        ));
    }
    let port = d.port.as_ref().map_or(port, |p| p.number);
    OutMirror {
        backend: format!("{}:{port}", d.host),
        // Istio mirrors everything when no percentage is given.
        percent: Some(percent.unwrap_or(100.0)),
        fraction: None,
    }
}

fn istio_match(policy: &str, m: &IstioMatch, notes: &mut Vec<String>) -> GatewayMatch {
    let path = m.uri.as_ref().and_then(|uri| {
        if uri.prefix.is_some() {
            notes.push(format!(
                "{policy}: Istio's uri prefix matches characters, PathPrefix matches path \
                 segments (/api matches /api/x, not /apix)"
            ));
        }
        string_match(uri).map(|(kind, value)| OutPath {
            kind: match kind {
                Kind::Exact => PathType::Exact,
                Kind::Prefix => PathType::PathPrefix,
                Kind::Regex => PathType::RegularExpression,
            },
            value,
        })
    });
    let method = m.method.as_ref().and_then(|s| s.exact.clone());
    let headers = m
        .headers
        .iter()
        .filter_map(|(name, s)| {
            let (kind, value) = string_match(s)?;
            let kind = match kind {
                Kind::Exact => ValueType::Exact,
                Kind::Regex => ValueType::RegularExpression,
                Kind::Prefix => {
                    return Some(OutHeaderMatch {
                        kind: ValueType::RegularExpression,
                        name: name.clone(),
                        value: format!("{}.*", regex_escape(&value)),
                    })
                }
            };
            Some(OutHeaderMatch {
                kind,
                name: name.clone(),
                value,
            })
        })
        .collect();
    GatewayMatch {
        path,
        method,
        headers,
    }
}

enum Kind {
    Exact,
    Prefix,
    Regex,
}

fn string_match(s: &StringMatch) -> Option<(Kind, String)> {
    if let Some(v) = &s.exact {
        return Some((Kind::Exact, v.clone()));
    }
    if let Some(v) = &s.prefix {
        return Some((Kind::Prefix, v.clone()));
    }
    s.regex.as_ref().map(|v| (Kind::Regex, v.clone()))
}

fn regex_escape(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn from_http_route(o: &Object, address: &str, out: &mut Vec<OutPolicy>, notes: &mut Vec<String>) {
    let mirrored: Vec<&RouteRule> = o
        .spec
        .rules
        .iter()
        .filter(|r| r.filters.iter().any(|f| f.kind == "RequestMirror"))
        .collect();
    for (i, rule) in mirrored.iter().enumerate() {
        let name = policy_name(&o.metadata, i, mirrored.len());
        let port = rule.backend_refs.first().and_then(|b| b.port).unwrap_or(80);
        let mirrors = rule
            .filters
            .iter()
            .filter_map(|f| f.request_mirror.as_ref())
            .map(|m| {
                let b = &m.backend_ref;
                let host = match b.namespace.as_ref().or(o.metadata.namespace.as_ref()) {
                    Some(ns) => format!("{}.{ns}.svc", b.name),
                    None => b.name.clone(),
                };
                OutMirror {
                    backend: format!("{host}:{}", b.port.unwrap_or(port)),
                    percent: m.percent,
                    fraction: m.fraction,
                }
            })
            .collect();
        if rule
            .filters
            .iter()
            .any(|f| f.kind == "RequestHeaderModifier")
        {
            notes.push(format!(
                "{name}: the rule's RequestHeaderModifier changes the primary's requests, not \
                 the mirror's; add a requestHeaderModifier to a mirror for the copy"
            ));
        }
        let matches = rule
            .matches
            .iter()
            .map(|m| GatewayMatch {
                path: m.path.as_ref().map(|p| OutPath {
                    kind: p.kind,
                    value: p.value.clone(),
                }),
                method: m.method.clone(),
                headers: m
                    .headers
                    .iter()
                    .map(|h| OutHeaderMatch {
                        kind: h.kind,
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
            })
            .collect();
        out.push(OutPolicy::new(name, address, port, matches, mirrors));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::parse;

    const VIRTUAL_SERVICE: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts: [httpbin]
  http:
  - match:
    - uri: {exact: /headers}
      headers:
        x-canary: {exact: "1"}
    route:
    - destination: {host: httpbin, subset: v1, port: {number: 8000}}
      weight: 100
    mirror: {host: httpbin-v2, port: {number: 80}}
    mirrorPercentage: {value: 50.0}
    mirrors:
    - destination: {host: httpbin-v3}
      percentage: {value: 10}
"#;

    const HTTP_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
    filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: web-v2, port: 8080}
        fraction: {numerator: 1, denominator: 1000}
    backendRefs: [{name: web-v1, port: 8080}]
"#;

    #[test]
    fn virtual_service_converts_to_a_valid_config() {
        let c = convert(VIRTUAL_SERVICE, Some("10.96.0.10"), &[]).unwrap();
        let config = parse(&c.yaml, "converted").unwrap_or_else(|e| panic!("{e}\n{}", c.yaml));
        let p = &config.policies[0];
        assert_eq!(p.target.unwrap().to_string(), "10.96.0.10:8000");
        assert_eq!(p.backends, ["httpbin-v2:80", "httpbin-v3:8000"]);
        assert_eq!(p.policy.mirrors[0].share.as_percent(), 50.0);
        assert_eq!(
            p.match_text,
            ["path Exact /headers, header x-canary Exact 1"]
        );
        assert!(c.notes.is_empty(), "{:?}", c.notes);
    }

    #[test]
    fn http_route_converts_and_both_in_one_stream() {
        let text = format!("{VIRTUAL_SERVICE}---\n{HTTP_ROUTE}");
        let c = convert(&text, None, &["veth1".into()]).unwrap();
        assert!(c.yaml.contains(ADDRESS_PLACEHOLDER));
        let fixed = c.yaml.replace(ADDRESS_PLACEHOLDER, "10.96.0.0/16");
        let config = parse(&fixed, "converted").unwrap_or_else(|e| panic!("{e}\n{fixed}"));
        let web = &config.policies[1];
        assert_eq!(web.name, "web");
        assert_eq!(web.backends, ["web-v2.default.svc:8080"]);
        assert!((web.policy.mirrors[0].share.as_percent() - 0.1).abs() < 1e-9);
        assert_eq!(web.match_text, ["path PathPrefix /api, method POST"]);
        assert_eq!(c.notes.len(), 1);
    }

    #[test]
    fn objects_without_mirroring_are_refused() {
        let plain = VIRTUAL_SERVICE
            .replace("    mirror: {host: httpbin-v2, port: {number: 80}}\n", "")
            .replace("    mirrors:\n    - destination: {host: httpbin-v3}\n      percentage: {value: 10}\n", "");
        assert!(matches!(
            convert(&plain, None, &[]),
            Err(IstioError::NothingToMirror)
        ));
    }
}
