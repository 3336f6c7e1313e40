//! The flags that say how the mirrored copy's Host is rewritten, shared by `mirror run` and
//! `mirror replay`.

use mirror_cores::rewrite::HostRewrite;

#[derive(Clone, Debug, clap::Args)]
pub struct HostRewriteArgs {
    /// Text inserted after the Host's name, before its port (Envoy's `-shadow` by default).
    #[arg(long, default_value = "-shadow", value_name = "TEXT")]
    pub host_suffix: String,
    /// Send this fixed Host instead of a suffixed one.
    #[arg(long, value_name = "HOST", conflicts_with = "keep_host")]
    pub host: Option<String>,
    /// Forward the Host header unchanged (for shadows behind virtual hosts).
    #[arg(long)]
    pub keep_host: bool,
}

impl HostRewriteArgs {
    /// The rule the flags say: keep, a fixed Host, or the suffix.
    pub fn rewrite(&self) -> HostRewrite {
        if self.keep_host {
            HostRewrite::Keep
        } else if let Some(host) = &self.host {
            HostRewrite::Fixed(host.clone())
        } else {
            HostRewrite::Suffix(self.host_suffix.clone())
        }
    }
}
