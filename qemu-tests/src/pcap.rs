//! Packet captures of the harness's hubs: with `HAVMS_PCAP_DIR=DIR` set, each hub writes every
//! frame it receives (before any cut drops it) to `DIR/NAME-PID-N.pcap` in the classic pcap
//! format (`tcpdump -r`, Wireshark), stamped when the hub read it. Off by default: a scenario
//! that needs to show where a packet waited turns it on (docs/testing.md, "Packet captures").

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Link type 1: Ethernet (QEMU's socket netdev sends bare Ethernet frames).
const LINKTYPE_ETHERNET: u32 = 1;
/// Bytes kept of each frame.
const SNAPLEN: u32 = 65535;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One capture file being written.
pub struct Capture {
    out: BufWriter<File>,
    path: PathBuf,
}

impl Capture {
    /// A capture for the hub `name` when `HAVMS_PCAP_DIR` is set; None otherwise, or (with a
    /// warning) when the file cannot be made: a capture is evidence, never a reason to fail.
    pub fn from_env(name: &str) -> Option<Capture> {
        let dir = PathBuf::from(std::env::var_os("HAVMS_PCAP_DIR")?);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = dir.join(format!("{name}-{}-{n}.pcap", std::process::id()));
        match Capture::create(path.clone()) {
            Ok(c) => {
                log::info!("{name}: capturing to {}", path.display());
                Some(c)
            }
            Err(e) => {
                log::warn!("{name}: no capture at {}: {e}", path.display());
                None
            }
        }
    }

    fn create(path: PathBuf) -> std::io::Result<Capture> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = BufWriter::new(File::create(&path)?);
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&SNAPLEN.to_le_bytes())?;
        out.write_all(&LINKTYPE_ETHERNET.to_le_bytes())?;
        Ok(Capture { out, path })
    }

    /// Records one frame, stamped now. A write error stops the capture (logged once).
    pub fn record(&mut self, frame: &[u8]) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let kept = frame.len().min(SNAPLEN as usize);
        let r = (|| {
            self.out.write_all(&(now.as_secs() as u32).to_le_bytes())?;
            self.out.write_all(&now.subsec_micros().to_le_bytes())?;
            self.out.write_all(&(kept as u32).to_le_bytes())?;
            self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
            self.out.write_all(&frame[..kept])
        })();
        if let Err(e) = r {
            log::warn!("capture {}: {e}; stopped", self.path.display());
            return false;
        }
        true
    }

    /// Writes out what is buffered (the hub does so when idle and when it stops).
    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_global_header_and_one_record_per_frame() {
        let dir = std::env::temp_dir().join(format!("havms-pcap-test-{}", std::process::id()));
        let path = dir.join("t.pcap");
        let mut c = Capture::create(path.clone()).unwrap();
        assert!(c.record(&[1, 2, 3, 4, 5]));
        assert!(c.record(&[9; 60]));
        c.flush();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[0..4], &0xa1b2_c3d4u32.to_le_bytes());
        assert_eq!(&bytes[20..24], &1u32.to_le_bytes());
        // 24-byte header, then 16 + 5, then 16 + 60.
        assert_eq!(bytes.len(), 24 + 16 + 5 + 16 + 60);
        assert_eq!(&bytes[24 + 8..24 + 12], &5u32.to_le_bytes());
        assert_eq!(&bytes[24 + 16..24 + 21], &[1, 2, 3, 4, 5]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
