//! Line input from a serial console: Enter may arrive as `\r`, `\n` or `\r\n`, and backspace as DEL
//! (0x7f) or BS (0x08) when the line discipline does not handle them (a tty left in raw mode by a
//! program that crashed). Reads byte by byte so nothing after the line is swallowed.

use std::io::{self, ErrorKind, Read};

pub struct LineReader<R> {
    inner: R,
    /// The previous line ended with `\r`: a `\n` right after it belongs to the same Enter.
    after_cr: bool,
}

const DEL: u8 = 0x7f;
const BS: u8 = 0x08;
const CTRL_U: u8 = 0x15;

impl<R: Read> LineReader<R> {
    pub fn new(inner: R) -> Self {
        LineReader {
            inner,
            after_cr: false,
        }
    }

    /// The next line without its terminator, control characters removed, backspaces applied;
    /// `None` at end of input (a final unterminated line is returned first).
    pub fn read_line(&mut self) -> io::Result<Option<String>> {
        let mut line: Vec<u8> = Vec::new();
        let mut got_any = false;
        loop {
            let mut b = [0u8; 1];
            match self.inner.read(&mut b) {
                Ok(0) => {
                    return Ok(got_any.then(|| String::from_utf8_lossy(&line).into_owned()));
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let after_cr = std::mem::take(&mut self.after_cr);
            match b[0] {
                b'\n' if after_cr && !got_any => continue,
                b'\n' => return Ok(Some(String::from_utf8_lossy(&line).into_owned())),
                b'\r' => {
                    self.after_cr = true;
                    return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
                }
                DEL | BS => {
                    // Drop a whole UTF-8 character, not just its last byte.
                    while let Some(last) = line.pop() {
                        if last & 0xc0 != 0x80 {
                            break;
                        }
                    }
                }
                CTRL_U => line.clear(),
                c if c < 0x20 => {}
                c => line.push(c),
            }
            got_any = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        let mut r = LineReader::new(input);
        let mut out = Vec::new();
        while let Some(l) = r.read_line().unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn enter_in_every_form() {
        assert_eq!(lines(b"1\n2\r3\r\n4\n\n"), ["1", "2", "3", "4", ""]);
        // CR CR is two Enters; CR LF LF is one Enter and an empty line.
        assert_eq!(lines(b"\r\r"), ["", ""]);
        assert_eq!(lines(b"a\r\n\n"), ["a", ""]);
    }

    #[test]
    fn backspace_and_control_characters() {
        assert_eq!(lines(b"12\x7f3\n"), ["13"]);
        assert_eq!(lines(b"x\x08\x08\x082\n"), ["2"]);
        assert_eq!(lines("é\x7fa\n".as_bytes()), ["a"]);
        assert_eq!(lines(b"junk\x15 4 \n"), [" 4 "]);
        assert_eq!(lines(b"\x1b[A1\x03\n"), ["[A1"]);
    }

    #[test]
    fn eof() {
        assert!(lines(b"").is_empty());
        assert_eq!(lines(b"5"), ["5"]);
        assert_eq!(lines(b"\x7f"), [""]);
    }
}
