//! The settings `mirror run` is running with, as `/config` serves them (no secrets: the
//! agent takes none; the Host rewrite and addresses are configuration, not credentials).

use serde_json::{json, Value};

use super::run::RunArgs;

impl RunArgs {
    pub fn effective_config(&self) -> Value {
        let capture = &self.capture;
        let host = &self.host_rewrite;
        let rewrite = if host.keep_host {
            json!({ "keep": true })
        } else if let Some(fixed) = &host.host {
            json!({ "fixed": fixed })
        } else {
            json!({ "suffix": host.host_suffix })
        };
        json!({
            "capture": {
                "interfaces": capture.ifaces,
                "direction": format!("{:?}", capture.direction).to_lowercase(),
                "targets": capture.targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "targets_file": capture.targets_file,
                "attach": format!("{:?}", capture.attach).to_lowercase(),
                "ring_mib": capture.ring_mib,
                "bpf_stats": capture.bpf_stats,
            },
            "config": self.config,
            "shadow": self.shadow,
            "percent": self.percent,
            "seed": self.seed,
            "host_rewrite": rewrite,
            "relay": {
                "max_shadow_connections": self.max_shadow_connections,
                "max_shadow_connections_per_source": self.max_shadow_connections_per_source(),
                "shadow_queue": self.shadow_queue,
                "max_inflight_mib": self.max_inflight_mib,
                "max_inflight_mib_per_source": self.max_inflight_mib_per_source(),
                "connect_timeout_ms": self.connect_timeout_ms,
                "response_timeout_ms": self.response_timeout_ms,
                "shadow_mark": self.shadow_mark,
            },
            "agent": {
                "poll_ms": self.poll_ms,
                "capture_threads": self.capture_threads,
                "nice": self.nice,
                "relay_nice": self.relay_nice,
                "grace_secs": self.grace_secs,
                "log_interval_secs": self.log_interval_secs,
            },
            "observe": {
                "admin_addr": self.observe.admin_addr(),
                "access_log": self.observe.access_log.as_ref().map(|d| format!("{d:?}")),
                "access_log_every": self.observe.access_log_every,
            },
        })
    }
}
