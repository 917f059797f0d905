//! Lines of an answer file for problems found after parsing, when serde_yaml no longer knows
//! positions: the line of a top-level key, or of a key inside it (block or flow style).

/// 1-based line holding byte `index` (an index past the end is the last line).
pub fn line_at(text: &str, index: usize) -> usize {
    let before = text.as_bytes().get(..index).unwrap_or(text.as_bytes());
    let lines = text.lines().count().max(1);
    (1 + before.iter().filter(|&&b| b == b'\n').count()).min(lines)
}

fn code(line: &str) -> &str {
    match line.find('#') {
        Some(i) => &line[..i],
        None => line,
    }
}

fn has_key(fragment: &str, key: &str) -> bool {
    fragment.match_indices(key).any(|(i, _)| {
        let before_ok = fragment[..i]
            .chars()
            .next_back()
            .is_none_or(|c| c == ' ' || c == '{' || c == ',' || c == '-');
        before_ok && fragment[i + key.len()..].trim_start().starts_with(':')
    })
}

/// The line of `key` inside top-level `section` (`key` empty: the section's own line); the
/// section's line when the key is not written (a missing key), 1 when neither is.
pub fn line_of(text: &str, section: &str, key: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines
        .iter()
        .position(|l| !l.starts_with([' ', '\t']) && has_key(code(l), section))
    else {
        return 1;
    };
    if key.is_empty() {
        return start + 1;
    }
    // Flow style on the section's line, or block style on the indented lines below it.
    let after_colon = code(lines[start]).split_once(':').map_or("", |(_, r)| r);
    if has_key(after_colon, key) {
        return start + 1;
    }
    lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| l.trim().is_empty() || l.starts_with([' ', '\t']))
        .find(|(_, l)| has_key(code(l), key))
        .map_or(start + 1, |(i, _)| i + 1)
}

/// The first line at or after `from` that holds `value`.
pub fn line_holding(text: &str, from: usize, value: &str) -> Option<usize> {
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, l)| code(l).contains(value))
        .map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "disk: /dev/vda\nlink: { interface: eth1, address: 10.0.0.1/24 }\nlan:\n  interface: eth0  # address: no\n  address: 1.2.3.4/24\npeer:\n  link_address: 10.0.0.2/24\n";

    #[test]
    fn finds_sections_and_keys_in_both_styles() {
        assert_eq!(line_of(TEXT, "disk", ""), 1);
        assert_eq!(line_of(TEXT, "link", "address"), 2);
        assert_eq!(line_of(TEXT, "lan", "address"), 5);
        assert_eq!(line_of(TEXT, "lan", "interface"), 4);
        // `address` under peer is not `link_address`: the section's line.
        assert_eq!(line_of(TEXT, "peer", "address"), 6);
        assert_eq!(line_of(TEXT, "peer", "link_address"), 7);
        assert_eq!(line_of(TEXT, "witness", ""), 1);
    }

    #[test]
    fn byte_offsets_to_lines() {
        assert_eq!(line_at("a\nb\nc", 2), 2);
        assert_eq!(line_at("a\nb", 99), 2);
    }
}
