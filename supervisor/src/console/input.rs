//! Line input from a serial console: Enter may arrive as `\r`, `\n` or `\r\n`, and backspace as DEL
//! (0x7f) or BS (0x08) when the line discipline does not handle them (a tty left in raw mode by a
//! program that crashed). It reads one byte per `read` from its source, so when the source is
//! unbuffered (the menu gives it fd 0 itself, see [`unbuffered_stdin`], not std's buffered `Stdin`)
//! nothing typed after the line is swallowed: it stays for the shell or ping the menu starts next.
//! A line is at most [`MAX_LINE`] bytes; the rest of a longer one is dropped up to its end.

use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::os::fd::AsFd;

/// Longest console line kept; a menu answer is a few bytes, an address a few dozen.
pub const MAX_LINE: usize = 1024;

/// One line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// Longer than [`MAX_LINE`] bytes; it was read up to its end and dropped.
    TooLong,
}

/// fd 0 without std's buffering: a duplicate of stdin's descriptor as a plain `File`.
pub fn unbuffered_stdin() -> io::Result<File> {
    Ok(File::from(io::stdin().as_fd().try_clone_to_owned()?))
}

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
    pub fn read_line(&mut self) -> io::Result<Option<Line>> {
        let mut line: Vec<u8> = Vec::new();
        let mut got_any = false;
        let mut too_long = false;
        let done = |line: &[u8], too_long: bool| {
            Some(if too_long {
                Line::TooLong
            } else {
                Line::Text(String::from_utf8_lossy(line).into_owned())
            })
        };
        loop {
            let mut b = [0u8; 1];
            match self.inner.read(&mut b) {
                Ok(0) => return Ok(if got_any { done(&line, too_long) } else { None }),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let after_cr = std::mem::take(&mut self.after_cr);
            match b[0] {
                b'\n' if after_cr && !got_any => continue,
                b'\n' => return Ok(done(&line, too_long)),
                b'\r' => {
                    self.after_cr = true;
                    return Ok(done(&line, too_long));
                }
                // Past the limit only the end of the line matters.
                _ if too_long => {}
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
                _ if line.len() >= MAX_LINE => {
                    too_long = true;
                    line = Vec::new();
                }
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
            out.push(match l {
                Line::Text(t) => t,
                Line::TooLong => "<too long>".into(),
            });
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
    fn long_lines_are_dropped_up_to_their_end() {
        let max = "x".repeat(MAX_LINE);
        let over = format!("{max}y");
        let input = format!("{max}\n{over}\n2\n{}\r\n3", "z".repeat(5 * MAX_LINE));
        assert_eq!(
            lines(input.as_bytes()),
            [&max, "<too long>", "2", "<too long>", "3"]
        );
        // Backspace does not rescue a line already too long; unterminated at EOF is still reported.
        assert_eq!(lines(format!("{over}\x7f\x7f").as_bytes()), ["<too long>"]);
    }

    #[test]
    fn unbuffered_stdin_leaves_the_rest_for_the_next_reader() {
        // A pipe stands in for the terminal: after one line through a File, the next byte is
        // still in the pipe (std's Stdin would have slurped it into its buffer).
        let (r, mut w) = std::io::pipe().unwrap();
        use std::io::Write;
        w.write_all(b"4\nls\n").unwrap();
        let fd: std::os::fd::OwnedFd = r.into();
        let mut reader = LineReader::new(File::from(fd.try_clone().unwrap()));
        assert_eq!(reader.read_line().unwrap(), Some(Line::Text("4".into())));
        let mut rest = [0u8; 3];
        File::from(fd).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"ls\n");
    }

    #[test]
    fn eof() {
        assert!(lines(b"").is_empty());
        assert_eq!(lines(b"5"), ["5"]);
        assert_eq!(lines(b"\x7f"), [""]);
    }
}
