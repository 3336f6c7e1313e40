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
fn http2_policies_rewrite_authority_and_refuse_what_is_not_there_yet() {
    let h2 = "interfaces: [eth0]\npolicies:\n- name: grpc\n  target: {address: 10.96.0.30, port: 50051}\n  protocol: http2\n  mirrors:\n  - backend: grpc-v2:50051\n    hostRewrite: {host: grpc-v2}\n";
    let config = parse(h2, "t").unwrap();
    assert_eq!(config.policies[0].protocol, super::Protocol::Http2);
    assert!(config.to_string().contains("protocol: http2"), "{config}");
    for extra in [
        "  matches: [{method: GET}]\n",
        "  sampling: {consistentBy: header, header: x}\n",
    ] {
        let text = h2.replace(
            "  protocol: http2\n",
            &format!("  protocol: http2\n{extra}"),
        );
        assert!(refused(&text).to_string().contains("not yet"), "{extra}");
    }
    let modifier = format!("{h2}    requestHeaderModifier: {{remove: [a]}}\n");
    assert!(refused(&modifier)
        .to_string()
        .contains("requestHeaderModifier"));
}
