//! The set of capture targets: `--target` flags plus an optional targets file that is
//! re-read while attached (on SIGHUP, and whenever its modification time changes, which is
//! how a mounted Kubernetes ConfigMap changes).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::target::{Target, TargetError};

#[derive(Debug, thiserror::Error)]
pub enum TargetSetError {
    #[error("cannot read targets file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {source}")]
    Parse {
        path: PathBuf,
        line: usize,
        #[source]
        source: TargetError,
    },
    #[error("no targets: give --target ADDR[/PREFIX]:PORT or a non-empty --targets-file")]
    Empty,
}

/// Where targets come from.
#[derive(Clone, Debug)]
pub struct TargetSource {
    pub fixed: Vec<Target>,
    pub file: Option<PathBuf>,
}

impl TargetSource {
    /// The current set: the fixed targets and the file's (one per line, `#` comments).
    pub fn load(&self) -> Result<BTreeSet<Target>, TargetSetError> {
        let mut targets: BTreeSet<Target> = self.fixed.iter().copied().collect();
        if let Some(path) = &self.file {
            targets.extend(parse_file(path)?);
        }
        if targets.is_empty() {
            return Err(TargetSetError::Empty);
        }
        Ok(targets)
    }

    /// The targets file's modification time, to notice edits.
    pub fn file_modified(&self) -> Option<SystemTime> {
        let path = self.file.as_ref()?;
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }
}

fn parse_file(path: &Path) -> Result<Vec<Target>, TargetSetError> {
    let text = std::fs::read_to_string(path).map_err(|source| TargetSetError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_lines(&text).map_err(|(line, source)| TargetSetError::Parse {
        path: path.to_owned(),
        line,
        source,
    })
}

/// Parses one target per line; blank lines and `#` comments are skipped. On error, returns
/// the 1-based line number.
fn parse_lines(text: &str) -> Result<Vec<Target>, (usize, TargetError)> {
    text.lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.split('#').next().unwrap_or("").trim()))
        .filter(|(_, line)| !line.is_empty())
        .map(|(number, line)| line.parse().map_err(|error| (number, error)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_with_comments() {
        let targets =
            parse_lines("# service VIPs\n198.19.0.10:8000\n\n  [fd00::10]:80  # v6\n").unwrap();
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[1].to_string(), "[fd00::10]:80");
    }

    #[test]
    fn reports_the_bad_line() {
        let (line, _) = parse_lines("198.19.0.10:8000\nnot-a-target\n").unwrap_err();
        assert_eq!(line, 2);
    }

    #[test]
    fn empty_set_is_an_error() {
        let source = TargetSource {
            fixed: vec![],
            file: None,
        };
        assert!(matches!(source.load(), Err(TargetSetError::Empty)));
    }
}
