//! How the demo talks: headings, shell-like commands and indented output, on stdout and flushed
//! at once so that the story keeps pace with what happens (and a test reading the pipe sees it).

use std::io::Write as _;
use std::path::Path;

/// Prints a line and flushes it.
pub fn say(text: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", text.as_ref());
    let _ = out.flush();
}

/// Starts a part of the story: `== Step 1: ...`.
pub fn heading(title: &str) {
    say(format!("\n== {title}"));
}

/// Shows a command the way a user would type it into a shell, so it can be pasted.
pub fn command(argv: &[&str]) {
    let quoted: Vec<String> = argv.iter().map(|arg| shell_quote(arg)).collect();
    say(format!("$ {}", quoted.join(" ")));
}

/// `arg` as a shell word: unchanged if plain, else in single quotes.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Prints `text` indented under the previous line; `(empty)` for nothing.
pub fn block(text: &str) {
    if text.trim().is_empty() {
        say("    (empty)");
        return;
    }
    for line in text.trim_end().lines() {
        say(format!("    {line}"));
    }
}

/// Prints an access log: a caption with its path, then its lines, or only the first `max` and a
/// count of the rest.
pub fn access_log(who: &str, path: &Path, max: usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    say(format!(
        "{who}'s access log ({}, {} line{}):",
        path.display(),
        lines.len(),
        if lines.len() == 1 { "" } else { "s" }
    ));
    let shown = lines.len().min(max);
    block(&lines[..shown].join("\n"));
    if lines.len() > shown {
        say(format!("    ... and {} more", lines.len() - shown));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_the_shell_would_mangle() {
        assert_eq!(
            shell_quote("http://httpbin:8000/headers"),
            "http://httpbin:8000/headers"
        );
        assert_eq!(shell_quote("%{http_code}\\n"), "'%{http_code}\\n'");
        assert_eq!(shell_quote("a?n=[1-2]"), "'a?n=[1-2]'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
