//! Config files, good and bad: every refusal names its key and its line.

use super::{parse, ConfigError};

/// The issue's example, complete.
pub(crate) const EXAMPLE: &str = r#"interfaces: ["veth*"]
admin: {address: 127.0.0.1:9477}
policies:
- name: httpbin
  target: {address: 10.96.0.10, port: 8000}
  matches:
  - path: {type: PathPrefix, value: /api}
    method: POST
    headers: [{name: x-canary, value: "1"}]
  mirrors:
  - backend: httpbin-v2.default.svc:80
    percent: 100
    hostRewrite: {suffix: "-shadow"}
    requestHeaderModifier:
      set: [{name: x-mirrored, value: "true"}]
      add: [{name: x-env, value: staging}]
      remove: [authorization]
  - backend: 10.0.3.9:8080
    fraction: {numerator: 1, denominator: 10}
  sampling: {consistentBy: header, header: x-request-id}
"#;

fn refused(text: &str) -> ConfigError {
    match parse(text, "test.yaml") {
        Ok(config) => panic!("accepted:\n{text}\n{config}"),
        Err(e) => e,
    }
}

#[test]
fn the_example_is_accepted_and_printed() {
    let config = parse(EXAMPLE, "test.yaml").unwrap();
    assert_eq!(config.interfaces, ["veth*"]);
    assert_eq!(config.admin, Some("127.0.0.1:9477".parse().unwrap()));
    let p = &config.policies[0];
    assert_eq!(p.backends, ["httpbin-v2.default.svc:80", "10.0.3.9:8080"]);
    assert_eq!(p.mirror_label(1), "httpbin/10.0.3.9:8080");
    let printed = config.to_string();
    for want in [
        "policy httpbin -> 10.96.0.10:8000",
        "match: path PathPrefix /api, method POST, header x-canary Exact 1",
        "sampling: consistent by header x-request-id",
        "mirror httpbin-v2.default.svc:80: 100% host suffix -shadow",
        "remove authorization",
        "mirror 10.0.3.9:8080: 10% host suffix -shadow",
    ] {
        assert!(printed.contains(want), "{want:?} not in\n{printed}");
    }
}

#[test]
fn prefixes_and_ipv6_targets() {
    let text = EXAMPLE.replace("address: 10.96.0.10", "address: 10.96.0.0/16");
    let p = &parse(&text, "t").unwrap().policies[0];
    assert_eq!(p.target.unwrap().to_string(), "10.96.0.0/16:8000");
    let text = EXAMPLE.replace("address: 10.96.0.10", "address: \"fd00::/64\"");
    let p = &parse(&text, "t").unwrap().policies[0];
    assert_eq!(p.target.unwrap().to_string(), "[fd00::]/64:8000");
}

/// Each bad file, the line its error must name, and a word the message must hold.
#[test]
fn bad_files_are_refused_with_their_line() {
    let cases: Vec<(String, u64, &str)> = vec![
        // Unknown key.
        (
            EXAMPLE.replace("    percent: 100\n", "    percent: 100\n    precent: 5\n"),
            13,
            "precent",
        ),
        // Wrong type.
        (EXAMPLE.replace("port: 8000", "port: eighty"), 5, "port"),
        // Missing backend.
        (
            EXAMPLE.replace("- backend: 10.0.3.9:8080\n    fraction", "- fraction"),
            18,
            "backend",
        ),
        // Out of range.
        (
            EXAMPLE.replace("percent: 100", "percent: 150"),
            11,
            "percent",
        ),
        // Both percent and fraction.
        (
            EXAMPLE.replace(
                "    percent: 100\n",
                "    percent: 100\n    fraction: {numerator: 1}\n",
            ),
            11,
            "not both",
        ),
        (
            EXAMPLE.replace("denominator: 10}", "denominator: 0}"),
            18,
            "fraction",
        ),
        (
            EXAMPLE.replace("value: /api}", "value: api}"),
            7,
            "must start with /",
        ),
        (
            EXAMPLE.replace(
                "type: PathPrefix, value: /api",
                "type: RegularExpression, value: \"(\"",
            ),
            7,
            "regular expression",
        ),
        (
            EXAMPLE.replace("type: PathPrefix", "type: Prefix"),
            7,
            "Prefix",
        ),
        (
            EXAMPLE.replace("remove: [authorization]", "remove: [content-length]"),
            11,
            "cannot be modified",
        ),
        (
            EXAMPLE.replace(
                "hostRewrite: {suffix: \"-shadow\"}",
                "hostRewrite: {suffix: x, keep: true}",
            ),
            11,
            "one of",
        ),
        (
            EXAMPLE.replace("backend: 10.0.3.9:8080", "backend: 10.0.3.9"),
            18,
            "HOST:PORT",
        ),
        (
            EXAMPLE.replace("address: 10.96.0.10", "address: 10.96.0.0/40"),
            5,
            "prefix",
        ),
        (
            EXAMPLE.replace("127.0.0.1:9477", "localhost"),
            2,
            "ADDRESS:PORT",
        ),
    ];
    for (text, line, word) in cases {
        let error = refused(&text);
        let message = error.to_string();
        assert_eq!(error.line(), Some(line), "{message}");
        assert!(message.contains(word), "{word:?} not in {message}");
    }
}

#[test]
fn raw_tcp_policies_take_shares_and_refuse_http_rules() {
    let tcp = "interfaces: [eth0]\npolicies:\n- name: cache\n  target: {address: 10.96.0.20, port: 6379}\n  protocol: tcp\n  mirrors:\n  - backend: redis-v2:6379\n    percent: 50\n";
    let config = parse(tcp, "t").unwrap();
    assert_eq!(config.policies[0].protocol, super::Protocol::Tcp);
    let printed = config.to_string();
    assert!(printed.contains("protocol: tcp"), "{printed}");
    assert!(
        printed.contains("mirror redis-v2:6379: 50% of connections"),
        "{printed}"
    );
    let http = tcp.replace("protocol: tcp", "protocol: http");
    assert_eq!(
        parse(&http, "t").unwrap().policies[0].protocol,
        super::Protocol::Http
    );
    for (extra, key) in [
        ("  matches: [{method: GET}]\n", "matches"),
        (
            "  sampling: {consistentBy: header, header: x-id}\n",
            "sampling",
        ),
    ] {
        let text = tcp.replace("  protocol: tcp\n", &format!("  protocol: tcp\n{extra}"));
        let error = refused(&text).to_string();
        assert!(
            error.starts_with("test.yaml:5:13: ") && error.contains(key),
            "{error}"
        );
    }
    for (extra, key) in [
        ("    hostRewrite: {keep: true}\n", "hostRewrite"),
        (
            "    requestHeaderModifier: {remove: [a]}\n",
            "requestHeaderModifier",
        ),
    ] {
        let error = refused(&format!("{tcp}{extra}")).to_string();
        assert!(error.contains(key), "{error}");
    }
    let error = refused(&tcp.replace("protocol: tcp", "protocol: udp")).to_string();
    assert!(error.contains("udp"), "{error}");
}

#[test]
fn http2_policies_take_matches_sampling_and_modifiers() {
    let h2 = "interfaces: [eth0]\npolicies:\n- name: grpc\n  target: {address: 10.96.0.30, port: 50051}\n  protocol: http2\n  matches: [{method: POST, path: {type: PathPrefix, value: /pkg.Service}}]\n  sampling: {consistentBy: header, header: x-request-id}\n  mirrors:\n  - backend: grpc-v2:50051\n    hostRewrite: {host: grpc-v2}\n    percent: 50\n    requestHeaderModifier: {set: [{name: x-mirrored, value: \"1\"}], remove: [authorization]}\n";
    let config = parse(h2, "t").unwrap();
    let p = &config.policies[0];
    assert_eq!(p.protocol, super::Protocol::Http2);
    assert_eq!(p.policy.matches.len(), 1);
    assert!(!p.policy.mirrors[0].rewrite.headers.is_empty());
    let text = config.to_string();
    for want in [
        "protocol: http2",
        "consistent by header x-request-id",
        "set x-mirrored: 1",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let forbidden = h2.replace("name: x-mirrored", "name: Connection");
    let error = refused(&forbidden).to_string();
    assert!(error.contains("connection-specific"), "{error}");
}

/// A Service target as the ConfigMap in deploy/ writes it.
const SERVICE: &str = r#"policies:
- name: httpbin
  target: {service: {name: httpbin, namespace: default, port: 8000}}
  capture: server
  mirrors:
  - backend: httpbin-v2.default.svc.cluster.local:8000
"#;

/// A `capture: client` policy with its selector.
const CLIENT: &str = r#"policies:
- name: from-sleep
  target: {service: {name: httpbin, port: http}}
  capture: client
  clients:
    podSelector:
      matchLabels: {app: sleep}
      matchExpressions: [{key: track, operator: NotIn, values: [canary]}]
  mirrors:
  - backend: httpbin-v2:8000
"#;

#[test]
fn service_targets_are_read_for_discovery() {
    use mirror_discovery::{Capture, ServicePort};
    let config = parse(SERVICE, "t").unwrap();
    assert!(
        config.interfaces.is_empty(),
        "discovery finds the interfaces"
    );
    let p = &config.policies[0];
    assert_eq!(p.target, None);
    let service = p.service.as_ref().unwrap();
    assert_eq!(service.name, "httpbin");
    assert_eq!(
        (
            service.service.namespace.as_str(),
            service.service.name.as_str()
        ),
        ("default", "httpbin")
    );
    assert_eq!(service.service.port, ServicePort::Number(8000));
    assert_eq!(service.capture, Capture::Server);
    // Nothing discovered yet: the policy covers no destination (not every one).
    assert!(!p.scope().contains("10.244.1.5".parse().unwrap(), 8000));
    assert!(config
        .to_string()
        .contains("policy httpbin -> service default/httpbin:8000 (capture server)"));

    let config = parse(CLIENT, "t").unwrap();
    let service = config.policies[0].service.as_ref().unwrap();
    assert_eq!(
        service.service.namespace, "default",
        "the default namespace"
    );
    assert_eq!(service.service.port, ServicePort::Name("http".into()));
    let Capture::Client { pod_selector } = &service.capture else {
        panic!("{:?}", service.capture)
    };
    let labels = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert!(mirror_discovery::policy::selects(
        pod_selector,
        &labels(&[("app", "sleep")])
    ));
    assert!(!mirror_discovery::policy::selects(
        pod_selector,
        &labels(&[("app", "sleep"), ("track", "canary")])
    ));
    assert!(config
        .to_string()
        .contains("capture client app=sleep, track NotIn (canary)"));
}

#[test]
fn bad_service_targets_are_refused_with_their_line() {
    let cases: Vec<(String, u64, &str)> = vec![
        (
            SERVICE.replace("namespace: default, ", "address: 10.0.0.1, namespace: default, "),
            3,
            "unknown field",
        ),
        (
            SERVICE.replace("{service: {name: httpbin, namespace: default, port: 8000}}", "{address: 10.0.0.1, port: 80, service: {name: a, port: 80}}"),
            3,
            "not both",
        ),
        (
            SERVICE.replace("{service: {name: httpbin, namespace: default, port: 8000}}", "{address: 10.0.0.1}"),
            3,
            "needs a port",
        ),
        (
            SERVICE.replace("{service: {name: httpbin, namespace: default, port: 8000}}", "{}"),
            3,
            "service: {name",
        ),
        (SERVICE.replace("name: httpbin,", "name: HTTPBin,"), 3, "DNS label"),
        (SERVICE.replace("namespace: default", "namespace: \"\""), 3, "DNS label"),
        (SERVICE.replace("port: 8000", "port: 70000"), 3, "1 to 65535"),
        (SERVICE.replace("port: 8000", "port: http_alt"), 3, "port name"),
        (SERVICE.replace("capture: server", "capture: both"), 4, "both"),
        (SERVICE.replace("capture: server", "capture: client"), 4, "needs clients"),
        (
            SERVICE.replace("capture: server", "clients: {podSelector: {matchLabels: {a: b}}}"),
            4,
            "capture: client",
        ),
        (CLIENT.replace("values: [canary]", "values: []"), 6, "needs values"),
        (
            CLIENT.replace(
                "      matchLabels: {app: sleep}\n      matchExpressions: [{key: track, operator: NotIn, values: [canary]}]\n",
                "      matchLabels: {}\n",
            ),
            6,
            "empty podSelector",
        ),
        (CLIENT.replace("operator: NotIn", "operator: Near"), 8, "Near"),
        (
            EXAMPLE.replace("port: 8000}", "port: 8000}\n  capture: client"),
            6,
            "only a Service target",
        ),
        // An address policy still needs interfaces.
        (
            format!("{SERVICE}{}", EXAMPLE.split_once("policies:\n").unwrap().1)
                .replace("- name: httpbin\n  target: {address", "- name: other\n  target: {address"),
            1,
            "no interfaces",
        ),
    ];
    for (text, line, word) in cases {
        let error = refused(&text);
        let message = error.to_string();
        assert!(message.contains(word), "{word:?} not in {message}\n{text}");
        assert_eq!(error.line(), Some(line), "{message}\n{text}");
    }
}

/// The ConfigMap in deploy/ holds a config file this parser accepts, and the example
/// MirrorPolicy's spec is a policy of the same shape.
#[test]
fn the_deploy_configmap_and_example_policy_are_valid_configs() {
    #[derive(serde::Deserialize)]
    struct ConfigMap {
        data: std::collections::BTreeMap<String, String>,
    }
    let manifest = include_str!("../../../deploy/base/configmap.yaml");
    let map: ConfigMap = serde_saphyr::from_str(manifest).unwrap();
    let config = parse(&map.data["config.yaml"], "deploy/base/configmap.yaml").unwrap();
    assert!(config.policies[0].service.is_some());

    #[derive(serde::Deserialize)]
    struct Object {
        spec: serde_json::Value,
    }
    let example = include_str!("../../../deploy/examples/httpbin-mirrorpolicy.yaml");
    let object: Object = serde_saphyr::from_str(example).unwrap();
    let mut policy = object.spec;
    policy["name"] = "httpbin".into();
    // JSON is YAML: the spec as one entry of `policies:`.
    let text = serde_json::json!({ "policies": [policy] }).to_string();
    let config = parse(&text, "deploy/examples/httpbin-mirrorpolicy.yaml").unwrap();
    assert!(config.policies[0].service.is_some());
}
