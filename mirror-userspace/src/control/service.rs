//! A policy's `target: {service: ...}` with its `capture` and `clients`, checked and turned
//! into what discovery follows. Names are checked as Kubernetes checks them, so that a typo
//! is refused here rather than matching nothing in the cluster.

use mirror_discovery::{
    Capture, LabelSelector, LabelSelectorRequirement, ServicePolicy, ServicePort, ServiceRef,
};
use serde_saphyr::Spanned;

use super::{
    config::At,
    file::{CaptureEntry, ClientsEntry, SelectorOperator, ServiceEntry, ServicePortEntry},
};

/// A refusal: where (if not the target itself), the key, and why.
pub(super) type Refusal = (Option<At>, &'static str, String);

/// The discovery policy of a Service target.
pub(super) fn build(
    policy: &str,
    entry: &ServiceEntry,
    capture: &Option<Spanned<CaptureEntry>>,
    clients: &Option<Spanned<ClientsEntry>>,
) -> Result<ServicePolicy, Refusal> {
    dns_label(&entry.name).map_err(|e| (None, "name", format!("service name: {e}")))?;
    let namespace = entry
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    dns_label(&namespace).map_err(|e| (None, "namespace", format!("namespace: {e}")))?;
    let port = match &entry.port {
        ServicePortEntry::Number(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p != 0)
            .map(ServicePort::Number)
            .ok_or_else(|| (None, "port", format!("service port {n} is not 1 to 65535")))?,
        ServicePortEntry::Name(name) => {
            port_name(name).map_err(|e| (None, "port", format!("service port {name:?}: {e}")))?;
            ServicePort::Name(name.clone())
        }
    };
    let capture = match (capture.as_ref().map(|c| c.value), clients) {
        (None | Some(CaptureEntry::Server), None) => Capture::Server,
        (None | Some(CaptureEntry::Server), Some(clients)) => {
            return Err((
                Some(At::from(clients)),
                "clients",
                "clients are for capture: client".to_owned(),
            ))
        }
        (Some(CaptureEntry::Client), None) => {
            return Err((
                capture.as_ref().map(At::from),
                "capture",
                "capture: client needs clients: {podSelector: ...}".to_owned(),
            ))
        }
        (Some(CaptureEntry::Client), Some(clients)) => Capture::Client {
            pod_selector: selector(clients)?,
        },
    };
    Ok(ServicePolicy {
        name: policy.to_owned(),
        service: ServiceRef {
            namespace,
            name: entry.name.clone(),
            port,
        },
        capture,
    })
}

/// `capture` or `clients` given to a policy whose target is an address: where, and which.
pub(super) fn only_for_services(
    capture: &Option<Spanned<CaptureEntry>>,
    clients: &Option<Spanned<ClientsEntry>>,
) -> Option<(At, &'static str)> {
    if let Some(clients) = clients {
        return Some((At::from(clients), "clients"));
    }
    capture
        .as_ref()
        .filter(|c| c.value == CaptureEntry::Client)
        .map(|c| (At::from(c), "capture"))
}

/// How `mirror config check` prints a Service target.
pub(super) fn describe(policy: &ServicePolicy) -> String {
    let s = &policy.service;
    let port = match &s.port {
        ServicePort::Number(n) => n.to_string(),
        ServicePort::Name(name) => name.clone(),
    };
    let side = match &policy.capture {
        Capture::Server => "capture server".to_owned(),
        Capture::Client { pod_selector } => {
            format!("capture client {}", selector_text(pod_selector))
        }
    };
    format!("service {}/{}:{port} ({side})", s.namespace, s.name)
}

fn selector(clients: &Spanned<ClientsEntry>) -> Result<LabelSelector, Refusal> {
    let at = Some(At::from(clients));
    let entry = &clients.value.pod_selector;
    let mut expressions = Vec::new();
    for e in &entry.match_expressions {
        let with_values = matches!(e.operator, SelectorOperator::In | SelectorOperator::NotIn);
        if with_values == e.values.is_empty() {
            let want = if with_values {
                "needs values"
            } else {
                "takes no values"
            };
            return Err((
                at,
                "matchExpressions",
                format!("{:?} on {:?} {want}", e.operator, e.key),
            ));
        }
        expressions.push(LabelSelectorRequirement {
            key: e.key.clone(),
            operator: format!("{:?}", e.operator),
            values: with_values.then(|| e.values.clone()),
        });
    }
    if entry.match_labels.is_empty() && expressions.is_empty() {
        return Err((
            at,
            "podSelector",
            "an empty podSelector would capture every pod of the namespace: name labels".to_owned(),
        ));
    }
    Ok(LabelSelector {
        match_labels: (!entry.match_labels.is_empty()).then(|| entry.match_labels.clone()),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    })
}

fn selector_text(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(format!("{} {} ({values})", e.key, e.operator));
    }
    parts.join(", ")
}

/// An RFC 1123 label: what Service and namespace names are.
fn dns_label(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a DNS label (lowercase letters, digits and '-', at most 63)"
        ))
    }
}

/// A named port: an IANA service name (at most 15, with a letter, no "--").
fn port_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err("not a port name (lowercase letters, digits and '-', at most 15)".to_owned())
    }
}
