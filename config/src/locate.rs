//! Finds the line of a value for checks that run after parsing (duplicates, references between
//! sections), where serde_yaml no longer knows positions. It looks for `key: value` as written, block or
//! flow style, which is how a person would search the file.
//!
//! Lines are counted the way an editor and `wc -l` count them: ended by `\n` (a `\r\n` is one
//! end, a lone `\r` is none). YAML also ends a line at a lone `\r`, so serde_yaml's own line
//! numbers can point past the end of such a file; [`line_at`] turns its byte offsets into ours.

/// The lines of `text` as [`line_of`] and friends number them (at least 1: an empty file has
/// one, empty, line).
pub fn line_count(text: &str) -> usize {
    text.lines().count().max(1)
}

/// 1-based line holding byte `index` of `text`; an index at or past the end is the last line.
pub fn line_at(text: &str, index: usize) -> usize {
    let before = text.as_bytes().get(..index).unwrap_or(text.as_bytes());
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    line.min(line_count(text))
}

/// 1-based line of the `nth` (0-based) occurrence of `key: value` in `text`, if any.
pub fn line_of(text: &str, key: &str, value: &str, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| has_pair(strip_comment(line), key, value))
        .nth(nth)
        .map(|(i, _)| i + 1)
}

/// Like [`line_of`], but the first occurrence at or after 1-based line `from`.
pub fn line_of_after(text: &str, from: usize, key: &str, value: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, line)| has_pair(strip_comment(line), key, value))
        .map(|(i, _)| i + 1)
}

/// 1-based line of the first `key:` at or after line `from`.
pub fn line_of_key_after(text: &str, from: usize, key: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, line)| has_pair(strip_comment(line), key, ""))
        .map(|(i, _)| i + 1)
}

/// 1-based line of the first occurrence of `key:` at the start of a line (a top-level or nested key).
pub fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let t = line.trim_start().trim_start_matches("- ");
            t.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(':'))
        })
        .map(|i| i + 1)
}

fn strip_comment(line: &str) -> &str {
    match line.find(" #") {
        Some(i) => &line[..i],
        None if line.trim_start().starts_with('#') => "",
        None => line,
    }
}

fn has_pair(line: &str, key: &str, value: &str) -> bool {
    let mut rest = line;
    while let Some(pos) = rest.find(key) {
        let before_ok = pos == 0
            || rest[..pos]
                .chars()
                .next_back()
                .is_some_and(|c| c == ' ' || c == '{' || c == ',' || c == '-');
        let after = &rest[pos + key.len()..];
        if before_ok {
            if let Some(v) = after.trim_start().strip_prefix(':') {
                let v = v.trim_start();
                let v = v.trim_start_matches(['"', '\'']);
                if value.is_empty() {
                    return true;
                }
                if let Some(tail) = v.strip_prefix(value) {
                    let tail = tail.trim_start_matches(['"', '\'']);
                    if tail.is_empty() || tail.starts_with([' ', ',', '}']) {
                        return true;
                    }
                }
            }
        }
        rest = &rest[pos + key.len()..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "cluster: demo\nnodes:\n  - name: a\n    link: { interface: eth1, address: 10.0.0.1/24 }\n  - name: a # again\nvms:\n  - name: \"web\"\n";

    #[test]
    fn finds_block_and_flow_pairs() {
        assert_eq!(line_of(TEXT, "name", "a", 0), Some(3));
        assert_eq!(line_of(TEXT, "name", "a", 1), Some(5));
        assert_eq!(line_of(TEXT, "address", "10.0.0.1/24", 0), Some(4));
        assert_eq!(line_of(TEXT, "name", "web", 0), Some(7));
        assert_eq!(line_of(TEXT, "interface", "eth", 0), None);
        assert_eq!(line_of_key(TEXT, "vms"), Some(6));
    }

    #[test]
    fn byte_offsets_become_newline_counted_lines() {
        let text = "cluster: demo\r\r\r\r\rnodes: 5\n";
        assert_eq!(line_count(text), 1);
        assert_eq!(line_at(text, text.find("nodes").unwrap()), 1);
        assert_eq!(line_at(text, text.len()), 1);
        assert_eq!(line_at("a\r\nb\r\n", 3), 2);
        assert_eq!(line_at("a\nb", 99), 2);
        assert_eq!(line_at("", 0), 1);
    }
}
