//! Turns raw serial bytes into plain text that patterns can match.
//!
//! Firmware, GRUB and menus paint with escape sequences and end lines with "\r\n"; patterns
//! should not care. The filter is a byte state machine so a sequence split across two reads
//! is still removed.

/// Escape-sequence state carried from one chunk to the next.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum State {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// After ESC and intermediate bytes (ESC ( B and friends).
    Intermediate,
    /// Inside ESC [ ... final.
    Csi,
    /// Inside ESC ] ... BEL or ESC \.
    Osc,
    /// ESC seen inside an OSC string.
    OscEscape,
}

/// Removes escape sequences, carriage returns and other control bytes; non-ASCII becomes '?'.
#[derive(Debug, Default)]
pub struct Filter {
    state: State,
}

impl Filter {
    /// Appends the plain text of `bytes` to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut String) {
        for &b in bytes {
            self.state = match (self.state, b) {
                (State::Text, 0x1b) => State::Escape,
                (State::Text, b'\n' | b'\t') => {
                    out.push(b as char);
                    State::Text
                }
                (State::Text, 0x20..=0x7e) => {
                    out.push(b as char);
                    State::Text
                }
                (State::Text, 0x80..=0xff) => {
                    out.push('?');
                    State::Text
                }
                (State::Text, _) => State::Text,
                (State::Escape, b'[') => State::Csi,
                (State::Escape, b']') => State::Osc,
                (State::Escape, 0x20..=0x2f) => State::Intermediate,
                (State::Escape, _) => State::Text,
                (State::Intermediate, 0x20..=0x2f) => State::Intermediate,
                (State::Intermediate, _) => State::Text,
                (State::Csi, 0x40..=0x7e) => State::Text,
                (State::Csi, _) => State::Csi,
                (State::Osc, 0x07) => State::Text,
                (State::Osc, 0x1b) => State::OscEscape,
                (State::Osc, _) => State::Osc,
                (State::OscEscape, _) => State::Text,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(chunks: &[&[u8]]) -> String {
        let mut f = Filter::default();
        let mut out = String::new();
        for c in chunks {
            f.feed(c, &mut out);
        }
        out
    }

    #[test]
    fn strips_sequences_and_carriage_returns() {
        assert_eq!(
            clean(&[b"\x1b[2J\x1b[1;1HHAVmS \x1b[1mnode a\x1b[0m\r\nEnter an option: "]),
            "HAVmS node a\nEnter an option: "
        );
        assert_eq!(
            clean(&[b"a\x1b(Bb\x1b]0;title\x07c\x1b]2;t\x1b\\d"]),
            "abcd"
        );
    }

    #[test]
    fn sequences_split_across_reads_are_still_removed() {
        assert_eq!(
            clean(&[b"x\x1b", b"[3", b"1mred\x1b[0", b"m\r", b"\n"]),
            "xred\n"
        );
    }

    #[test]
    fn non_ascii_becomes_a_question_mark() {
        assert_eq!(clean(&["\u{2500}ok".as_bytes()]), "???ok");
    }
}
