//! The demo's command line: `mirror-demo [--keep | --down] [--label NAME]`.

/// Label of the set-up `cargo xtask demo` makes and `--down` removes: namespaces
/// `mirror-demo-*`.
pub const DEFAULT_LABEL: &str = "demo";

/// Istio's "Mirroring" task on network namespaces, with the mirror agent in place of Envoy.
#[derive(Debug, PartialEq, Eq, clap::Parser)]
#[command(name = "mirror-demo")]
pub struct Options {
    /// Leave the set-up running (servers, and the agent mirroring 100%).
    #[arg(long, conflicts_with = "down")]
    pub keep: bool,
    /// Remove a set-up left by --keep.
    #[arg(long)]
    pub down: bool,
    /// Name the set-up mirror-NAME-* instead of mirror-demo-* (lets the tests run beside a
    /// kept demo without touching it).
    #[arg(long, default_value = DEFAULT_LABEL, value_name = "NAME")]
    pub label: String,
}

impl Options {
    /// The command that removes this set-up, as the user would type it.
    pub fn down_command(&self) -> String {
        if self.label == DEFAULT_LABEL {
            "cargo xtask demo --down".to_owned()
        } else {
            format!("mirror-demo --down --label {}", self.label)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("mirror-demo").chain(args.iter().copied()))
    }

    #[test]
    fn flags_and_label() {
        let options = parse(&["--keep", "--label", "x1"]).unwrap();
        assert!(options.keep && !options.down);
        assert_eq!(options.label, "x1");
        assert_eq!(parse(&[]).unwrap().label, DEFAULT_LABEL);
        assert_eq!(
            parse(&["--help"]).unwrap_err().kind(),
            clap::error::ErrorKind::DisplayHelp
        );
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse(&["--keep", "--down"]).is_err());
        assert!(parse(&["--label"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
