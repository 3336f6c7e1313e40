//! The demo's command line: `mirror-demo [--keep | --down] [--label NAME]`.
//!
//! Parsed by hand: three flags do not justify a new dependency for the test-bed package.

use anyhow::{bail, Context as _, Result};

/// Label of the set-up `cargo xtask demo` makes and `--down` removes: namespaces
/// `mirror-demo-*`.
pub const DEFAULT_LABEL: &str = "demo";

pub const USAGE: &str = "\
usage: mirror-demo [--keep | --down] [--label NAME]
  --keep        leave the set-up running (servers, and the agent mirroring 100%)
  --down        remove a set-up left by --keep
  --label NAME  name the set-up mirror-NAME-* instead of mirror-demo-* (lets the tests run
                beside a kept demo without touching it)";

/// What to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Options {
    pub keep: bool,
    pub down: bool,
    pub label: String,
}

impl Options {
    /// Parses the arguments after the program name. `Ok(None)` means help was asked for.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Self>> {
        let mut options = Options {
            keep: false,
            down: false,
            label: DEFAULT_LABEL.to_owned(),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--keep" => options.keep = true,
                "--down" => options.down = true,
                "--label" => options.label = args.next().context("--label needs a name")?,
                "-h" | "--help" => return Ok(None),
                other => bail!("unknown argument {other:?}\n{USAGE}"),
            }
        }
        if options.keep && options.down {
            bail!("--keep and --down exclude each other\n{USAGE}");
        }
        Ok(Some(options))
    }

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
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>> {
        Options::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn flags_and_label() {
        let options = parse(&["--keep", "--label", "x1"]).unwrap().unwrap();
        assert!(options.keep && !options.down);
        assert_eq!(options.label, "x1");
        assert_eq!(parse(&[]).unwrap().unwrap().label, DEFAULT_LABEL);
        assert_eq!(parse(&["--help"]).unwrap(), None);
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse(&["--keep", "--down"]).is_err());
        assert!(parse(&["--label"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
