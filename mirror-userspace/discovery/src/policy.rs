//! What a policy says about discovery: which Service it targets and on which side to capture.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize;

/// A policy whose target is a Service, reduced to what discovery needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePolicy {
    /// The policy's name, carried into the desired state so each capture says why it exists.
    pub name: String,
    pub service: ServiceRef,
    pub capture: Capture,
}

/// `target: {service: {name, namespace, port}}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: ServicePort,
}

/// A Service port, as a policy names it: its number or its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServicePort {
    Number(u16),
    Name(String),
}

/// Where the requests are copied.
#[derive(Debug, Clone, PartialEq)]
pub enum Capture {
    /// At the Service's backend pods on this node, matching pod IP and target port: each
    /// request once, whoever the caller and however it was load-balanced.
    Server,
    /// At the caller pods on this node that `pod_selector` selects (in the policy's namespace),
    /// matching the Service's cluster IPs and port and every endpoint's pod IP and target port.
    Client { pod_selector: LabelSelector },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy {policy}: capture: client needs clients.podSelector")]
    ClientWithoutSelector { policy: String },
    #[error("policy {policy}: service port {port} is not between 1 and 65535")]
    BadPort { policy: String, port: i64 },
    #[error("policy {policy}: {reason}")]
    Invalid { policy: String, reason: String },
}

// === MirrorPolicy objects ===

/// The part of a `MirrorPolicy`'s spec (deploy/base/crd.yaml) that discovery reads; the API
/// server has already checked the rest against the schema.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecView {
    target: TargetView,
    #[serde(default)]
    capture: Option<String>,
    #[serde(default)]
    clients: Option<ClientsView>,
}

#[derive(Debug, Deserialize)]
struct TargetView {
    #[serde(default)]
    service: Option<ServiceView>,
}

#[derive(Debug, Deserialize)]
struct ServiceView {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    port: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientsView {
    #[serde(default)]
    pod_selector: Option<LabelSelector>,
}

impl ServicePolicy {
    /// Reads a `MirrorPolicy`'s spec (JSON, as the API serves it). `Ok(None)` for a policy
    /// whose target is an address: nothing to discover.
    pub fn from_mirror_policy(
        name: &str,
        namespace: &str,
        spec: &serde_json::Value,
    ) -> Result<Option<ServicePolicy>, PolicyError> {
        let invalid = |reason: String| PolicyError::Invalid {
            policy: format!("{namespace}/{name}"),
            reason,
        };
        let spec = SpecView::deserialize(spec).map_err(|err| invalid(err.to_string()))?;
        let Some(service) = spec.target.service else {
            return Ok(None);
        };
        let port = match service.port {
            serde_json::Value::Number(number) => {
                let port = number.as_i64().unwrap_or(-1);
                ServicePort::Number(u16::try_from(port).ok().filter(|p| *p != 0).ok_or(
                    PolicyError::BadPort {
                        policy: format!("{namespace}/{name}"),
                        port,
                    },
                )?)
            }
            serde_json::Value::String(name) => ServicePort::Name(name),
            other => {
                return Err(invalid(format!(
                    "service port {other} is not a number or a name"
                )))
            }
        };
        let capture = match spec.capture.as_deref() {
            None | Some("server") => Capture::Server,
            Some("client") => Capture::Client {
                pod_selector: spec.clients.and_then(|c| c.pod_selector).ok_or_else(|| {
                    PolicyError::ClientWithoutSelector {
                        policy: format!("{namespace}/{name}"),
                    }
                })?,
            },
            Some(other) => {
                return Err(invalid(format!(
                    "capture {other:?} is not server or client"
                )))
            }
        };
        Ok(Some(ServicePolicy {
            name: format!("{namespace}/{name}"),
            service: ServiceRef {
                namespace: service.namespace.unwrap_or_else(|| namespace.to_string()),
                name: service.name,
                port,
            },
            capture,
        }))
    }
}

// === label selectors ===

/// Whether `labels` satisfy `selector`, with the API's semantics: every `matchLabels` pair and
/// every expression must hold; an empty selector selects everything. An operator the API does
/// not define selects nothing.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions = selector.match_expressions.iter().flatten().all(|expr| {
        let values = expr.values.as_deref().unwrap_or_default();
        let value = labels.get(&expr.key);
        match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    pairs && expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_follow_the_api_semantics() {
        let selector: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "sleep"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "env", "operator": "NotIn", "values": ["prod"]}
            ]
        }))
        .unwrap();
        assert!(selects(
            &selector,
            &labels(&[("app", "sleep"), ("tier", "a")])
        ));
        assert!(selects(
            &selector,
            &labels(&[("app", "sleep"), ("tier", "b"), ("env", "dev")])
        ));
        assert!(!selects(&selector, &labels(&[("app", "sleep")])));
        assert!(!selects(
            &selector,
            &labels(&[("app", "curl"), ("tier", "a")])
        ));
        assert!(!selects(
            &selector,
            &labels(&[("app", "sleep"), ("tier", "a"), ("canary", "1")])
        ));
        assert!(!selects(
            &selector,
            &labels(&[("app", "sleep"), ("tier", "a"), ("env", "prod")])
        ));
        assert!(selects(&LabelSelector::default(), &labels(&[])));
        let bogus: LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}))
                .unwrap();
        assert!(!selects(&bogus, &labels(&[("a", "1")])));
    }

    #[test]
    fn mirror_policy_specs_are_read_with_defaults() {
        let spec = json!({
            "target": {"service": {"name": "httpbin", "port": 8000}},
            "mirrors": [{"backend": "httpbin-v2:8000"}]
        });
        let policy = ServicePolicy::from_mirror_policy("httpbin", "default", &spec)
            .unwrap()
            .unwrap();
        assert_eq!(policy.name, "default/httpbin");
        assert_eq!(
            policy.service,
            ServiceRef {
                namespace: "default".into(),
                name: "httpbin".into(),
                port: ServicePort::Number(8000)
            }
        );
        assert_eq!(policy.capture, Capture::Server);

        let spec = json!({
            "target": {"service": {"name": "httpbin", "namespace": "web", "port": "http"}},
            "capture": "client",
            "clients": {"podSelector": {"matchLabels": {"app": "sleep"}}},
            "mirrors": [{"backend": "httpbin-v2:8000"}]
        });
        let policy = ServicePolicy::from_mirror_policy("p", "default", &spec)
            .unwrap()
            .unwrap();
        assert_eq!(policy.service.namespace, "web");
        assert_eq!(policy.service.port, ServicePort::Name("http".into()));
        assert!(matches!(policy.capture, Capture::Client { .. }));
    }

    #[test]
    fn address_targets_need_no_discovery_and_bad_specs_say_why() {
        let address = json!({"target": {"address": "10.96.0.10", "port": 8000}, "mirrors": []});
        assert_eq!(
            ServicePolicy::from_mirror_policy("a", "default", &address).unwrap(),
            None
        );
        let no_selector = json!({
            "target": {"service": {"name": "s", "port": 80}}, "capture": "client"
        });
        assert_eq!(
            ServicePolicy::from_mirror_policy("c", "ns", &no_selector),
            Err(PolicyError::ClientWithoutSelector {
                policy: "ns/c".into()
            })
        );
        let bad_port = json!({"target": {"service": {"name": "s", "port": 70000}}});
        assert_eq!(
            ServicePolicy::from_mirror_policy("b", "ns", &bad_port),
            Err(PolicyError::BadPort {
                policy: "ns/b".into(),
                port: 70000
            })
        );
    }
}
