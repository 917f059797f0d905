//! File system labels read straight from a device's first sectors (no blkid on the node).
//!
//! ext2/3/4: superblock at byte 1024, magic 0xEF53 at +56, 16-byte label at +120.
//! FAT12/16/32: boot sector with a sane BPB; the 11-byte volume label is at 0x2B (FAT12/16) or
//! 0x47 (FAT32), valid when the extended boot signature (0x29) precedes it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Ext4,
    Vfat,
}

impl FsType {
    /// The name mount(2) wants.
    pub fn mount_name(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Vfat => "vfat",
        }
    }

    /// Mount options. vfat's default iocharset is a kernel config choice (Debian: ascii, whose
    /// nls module the image may not hold): name one the modules list carries (nls_iso8859_1,
    /// with nls_cp437 for the default codepage), and keep the cluster's files private.
    pub fn mount_options(self) -> Option<&'static str> {
        match self {
            FsType::Ext4 => None,
            FsType::Vfat => Some("iocharset=iso8859-1,umask=0077"),
        }
    }
}

/// How many bytes of the device `probe` needs.
pub const PROBE_LEN: usize = 4096;

const EXT_SB: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;

fn le16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .trim_end()
        .to_string()
}

/// The ext2/3/4 label, `Some("")` for an unlabelled ext file system, `None` if it is not one.
pub fn ext_label(buf: &[u8]) -> Option<String> {
    if le16(buf, EXT_SB + 56)? != EXT_MAGIC {
        return None;
    }
    Some(text(buf.get(EXT_SB + 120..EXT_SB + 136)?))
}

/// The FAT label, `Some("")` for an unlabelled FAT file system, `None` if it is not one.
pub fn fat_label(buf: &[u8]) -> Option<String> {
    if buf.get(510..512)? != [0x55, 0xAA] {
        return None;
    }
    let bytes_per_sector = le16(buf, 11)?;
    let sectors_per_cluster = buf[13];
    let reserved = le16(buf, 14)?;
    let fats = buf[16];
    let sane = matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && sectors_per_cluster.is_power_of_two()
        && reserved > 0
        && (1..=2).contains(&fats)
        // An MBR has a jump instruction neither at 0 nor a BPB; FAT boot sectors start EB xx 90 or E9.
        && (buf[0] == 0xEB || buf[0] == 0xE9);
    if !sane {
        return None;
    }
    // FAT32 keeps its FAT size at 0x24 and leaves the 16-bit one (0x16) zero.
    let (sig_at, label_at) = if le16(buf, 0x16)? == 0 {
        (0x42, 0x47)
    } else {
        (0x26, 0x2B)
    };
    if buf[sig_at] != 0x29 {
        return Some(String::new());
    }
    let label = text(buf.get(label_at..label_at + 11)?);
    Some(if label == "NO NAME" {
        String::new()
    } else {
        label
    })
}

/// The file system type and label of a device's first `PROBE_LEN` bytes.
pub fn probe(buf: &[u8]) -> Option<(FsType, String)> {
    if let Some(l) = ext_label(buf) {
        return Some((FsType::Ext4, l));
    }
    fat_label(buf).map(|l| (FsType::Vfat, l))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext_image(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_LEN];
        b[EXT_SB + 56..EXT_SB + 58].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        b[EXT_SB + 120..EXT_SB + 120 + label.len()].copy_from_slice(label.as_bytes());
        b
    }

    fn fat_image(fat32: bool, label: &str) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_LEN];
        b[0] = 0xEB;
        b[1] = 0x3C;
        b[2] = 0x90;
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 4;
        b[14..16].copy_from_slice(&(if fat32 { 32u16 } else { 4 }).to_le_bytes());
        b[16] = 2;
        b[0x16..0x18].copy_from_slice(&(if fat32 { 0u16 } else { 200 }).to_le_bytes());
        let (sig, at) = if fat32 { (0x42, 0x47) } else { (0x26, 0x2B) };
        b[sig] = 0x29;
        let mut padded = [b' '; 11];
        padded[..label.len()].copy_from_slice(label.as_bytes());
        b[at..at + 11].copy_from_slice(&padded);
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn ext_labels() {
        assert_eq!(
            probe(&ext_image("HAVMS-DATA")),
            Some((FsType::Ext4, "HAVMS-DATA".into()))
        );
        assert_eq!(ext_label(&ext_image("")), Some(String::new()));
        // A full 16-byte label has no terminating NUL.
        assert_eq!(
            ext_label(&ext_image("0123456789abcdef")),
            Some("0123456789abcdef".into())
        );
        let mut bad = ext_image("HAVMS-DATA");
        bad[EXT_SB + 56] = 0;
        assert_eq!(ext_label(&bad), None);
        assert_eq!(ext_label(&[0u8; 100]), None);
    }

    #[test]
    fn fat_labels() {
        assert_eq!(
            probe(&fat_image(true, "HAVMS-DATA")),
            Some((FsType::Vfat, "HAVMS-DATA".into()))
        );
        assert_eq!(
            probe(&fat_image(false, "HAVMS-DATA")),
            Some((FsType::Vfat, "HAVMS-DATA".into()))
        );
        assert_eq!(fat_label(&fat_image(false, "NO NAME")), Some(String::new()));
        let mut no_sig = fat_image(true, "X");
        no_sig[0x42] = 0;
        assert_eq!(fat_label(&no_sig), Some(String::new()));
    }

    #[test]
    fn insane_boot_sectors_are_not_fat() {
        for (at, value) in [(510usize, 0u8), (13, 3), (16, 0), (0, 0xFA), (12, 3)] {
            let mut b = fat_image(true, "HAVMS-DATA");
            b[at] = value;
            assert_eq!(fat_label(&b), None, "byte {at} = {value}");
        }
        assert_eq!(probe(&vec![0u8; PROBE_LEN]), None);
        assert_eq!(probe(&[0x55; 300]), None);
    }
}
