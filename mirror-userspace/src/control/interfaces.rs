//! The config's `interfaces`: names or glob patterns (`*` any run, `?` one character),
//! expanded against the interfaces that exist when the agent starts.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum InterfacesError {
    #[error("cannot list network interfaces in {0}")]
    List(String, #[source] std::io::Error),
    #[error("no interface matches {0:?}")]
    NoMatch(String),
}

/// The interfaces named by `patterns`, each once, in name order within each pattern.
/// A plain name is kept even if absent (attaching then reports it); a pattern that matches
/// nothing is refused.
pub fn expand(patterns: &[String]) -> Result<Vec<String>, InterfacesError> {
    let dir = Path::new("/sys/class/net");
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| InterfacesError::List(dir.display().to_string(), e))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    present.sort();
    expand_among(patterns, &present)
}

/// The interfaces present now that `patterns` name, with their indexes: what live attach
/// follows (a pattern that matches nothing yet is no error there).
pub fn present_matching(patterns: &[String]) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| patterns.iter().any(|p| glob(p.as_bytes(), name.as_bytes())))
        .filter_map(|name| {
            let index = crate::capture::classifier::ifindex(&name)?;
            Some((name, index))
        })
        .collect()
}

fn expand_among(patterns: &[String], present: &[String]) -> Result<Vec<String>, InterfacesError> {
    let mut out: Vec<String> = Vec::new();
    for pattern in patterns {
        if !pattern.contains(['*', '?']) {
            if !out.contains(pattern) {
                out.push(pattern.clone());
            }
            continue;
        }
        let hits: Vec<&String> = present
            .iter()
            .filter(|name| glob(pattern.as_bytes(), name.as_bytes()))
            .collect();
        if hits.is_empty() {
            return Err(InterfacesError::NoMatch(pattern.clone()));
        }
        for name in hits {
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    Ok(out)
}

/// `*` and `?` glob match, iterative with one backtrack point: O(pattern x name).
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        for (pattern, name, want) in [
            ("veth*", "veth1a", true),
            ("veth*", "eth0", false),
            ("*", "lo", true),
            ("n?-*", "n1-client", true),
            ("n?-*", "n12-client", false),
            ("*-v2", "pod-a-v2", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ] {
            assert_eq!(
                glob(pattern.as_bytes(), name.as_bytes()),
                want,
                "{pattern} {name}"
            );
        }
    }

    #[test]
    fn expands_patterns_once_each_and_refuses_empty_ones() {
        let present: Vec<String> = ["eth0", "lo", "veth1", "veth2"].map(String::from).to_vec();
        let got = expand_among(&["veth*".into(), "veth1".into(), "eth9".into()], &present).unwrap();
        assert_eq!(got, ["veth1", "veth2", "eth9"]);
        assert!(expand_among(&["wg*".into()], &present).is_err());
    }
}
