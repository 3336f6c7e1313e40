//! Reading what a server appended to its log since a point, so that a run over a log of
//! millions of lines costs what the run logged, not the whole file.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use anyhow::{Context as _, Result};

/// The complete lines of `path` past byte `offset` (a length the file had earlier, hence a
/// line boundary). A last line without its newline is still being written and is left out.
pub fn read_complete_lines_since(path: &Path, offset: u64) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    file.seek(SeekFrom::Start(offset))
        .with_context(|| format!("seek {} to {offset}", path.display()))?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("read {} from {offset}", path.display()))?;
    text.truncate(text.rfind('\n').map_or(0, |i| i + 1));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_past_the_offset() {
        let dir = std::env::temp_dir().join(format!("log-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        std::fs::write(&path, "a\nbb\nccc\npartial").unwrap();
        assert_eq!(read_complete_lines_since(&path, 0).unwrap(), "a\nbb\nccc\n");
        assert_eq!(read_complete_lines_since(&path, 2).unwrap(), "bb\nccc\n");
        assert_eq!(read_complete_lines_since(&path, 9).unwrap(), "");
        assert_eq!(read_complete_lines_since(&path, 100).unwrap(), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
