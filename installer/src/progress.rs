//! Progress while writing: numbered steps (`[3/9] formatting HAVMS-SYS-A (ext4)`) and, for the
//! big copies, a line at every quarter, so a serial console (and a test) sees it move.

use std::io::{Read, Write};
use std::time::Instant;

use anyhow::{Context, Result};

/// Numbered steps on a writer.
pub struct Steps<W> {
    out: W,
    total: usize,
    done: usize,
    started: Instant,
}

impl<W: Write> Steps<W> {
    pub fn new(out: W, total: usize) -> Self {
        Self {
            out,
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// Announces the next step.
    pub fn step(&mut self, what: &str) -> Result<()> {
        self.done += 1;
        log::info!("step {}/{}: {what}", self.done, self.total);
        writeln!(self.out, "[{}/{}] {what}", self.done, self.total).context("writing progress")?;
        self.out.flush().context("writing progress")
    }

    pub fn say(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "{text}").context("writing progress")
    }

    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Copies `len` bytes from `from` to `to`, saying `name: 25%` ... `name: 100%`.
    pub fn copy(
        &mut self,
        name: &str,
        len: u64,
        from: &mut impl Read,
        to: &mut impl Write,
    ) -> Result<u64> {
        let mut buf = vec![0u8; 1 << 20];
        let mut copied = 0u64;
        let mut next_quarter = 1;
        loop {
            let n = from
                .read(&mut buf)
                .with_context(|| format!("reading {name}"))?;
            if n == 0 {
                break;
            }
            to.write_all(&buf[..n])
                .with_context(|| format!("writing {name}"))?;
            copied += n as u64;
            while next_quarter <= 4 && copied * 4 >= len * next_quarter {
                writeln!(self.out, "      {name}: {}%", next_quarter * 25)
                    .context("writing progress")?;
                next_quarter += 1;
            }
        }
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_numbered_and_copies_report_quarters() {
        let mut out = Vec::new();
        let mut dst = Vec::new();
        let src = vec![7u8; 3 << 20];
        {
            let mut s = Steps::new(&mut out, 2);
            s.step("partitioning /dev/vda").unwrap();
            s.step("copying the system").unwrap();
            assert_eq!(
                s.copy("initramfs.img", src.len() as u64, &mut &src[..], &mut dst)
                    .unwrap(),
                3 << 20
            );
        }
        assert_eq!(dst, src);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "[1/2] partitioning /dev/vda\n[2/2] copying the system\n      initramfs.img: 25%\n      initramfs.img: 50%\n      initramfs.img: 75%\n      initramfs.img: 100%\n"
        );
    }
}
