//! The archive read back with an independent newc reader, and the reproducibility guarantee.

use std::io::Read;

use super::*;

/// (name, mode, ino, uid, gid, mtime, data, (rdev major, minor)) of every entry, read back
/// with cpio's reader.
type Entry = (String, u32, u32, u32, u32, u32, Vec<u8>, (u32, u32));

fn read_back(gz_bytes: &[u8]) -> Vec<Entry> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz_bytes)
        .read_to_end(&mut raw)
        .expect("valid gzip");
    let mut rest: &[u8] = &raw;
    let mut out = Vec::new();
    loop {
        let mut reader = cpio::newc::Reader::new(rest).expect("valid newc entry");
        if reader.entry().is_trailer() {
            break;
        }
        let e = reader.entry();
        let rdev = (e.rdev_major(), e.rdev_minor());
        let (name, mode, ino, uid, gid, mtime) = (
            e.name().to_string(),
            e.mode(),
            e.ino(),
            e.uid(),
            e.gid(),
            e.mtime(),
        );
        let mut data = Vec::new();
        reader.read_to_end(&mut data).expect("entry data");
        rest = reader.finish().expect("entry end");
        out.push((name, mode, ino, uid, gid, mtime, data, rdev));
    }
    out
}

/// A small tree whose file contents live on disk, like the real image's.
fn sample(dir: &Path) -> Tree {
    std::fs::write(dir.join("init"), b"\x7fELF pretend init").expect("write");
    std::fs::write(dir.join("mod.ko"), vec![7u8; 100_000]).expect("write");
    let mut t = Tree::new();
    t.add_file("/init", 0o755, Contents::Path(dir.join("init")))
        .expect("add");
    t.add_file(
        "/lib/modules/6.1.0-1-amd64/kernel/mod.ko",
        0o644,
        Contents::Path(dir.join("mod.ko")),
    )
    .expect("add");
    t.add_file(
        "/etc/havms/modules.list",
        0o644,
        Contents::Bytes(b"tun\n".to_vec()),
    )
    .expect("add");
    t.add_symlink("/bin/sh", "/bin/busybox").expect("add");
    t.add_dir("/proc", 0o555).expect("add");
    t.add_char_dev("/dev/console", 0o600, 5, 1).expect("add");
    t
}

#[test]
fn archive_reads_back_with_names_modes_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("initramfs.img");
    let size = write_initramfs(&sample(dir.path()), &out, 1234).expect("write");
    let bytes = std::fs::read(&out).expect("read");
    assert_eq!(size, bytes.len() as u64);
    let entries = read_back(&bytes);
    let names: Vec<_> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "bin",
            "bin/sh",
            "dev",
            "dev/console",
            "etc",
            "etc/havms",
            "etc/havms/modules.list",
            "init",
            "lib",
            "lib/modules",
            "lib/modules/6.1.0-1-amd64",
            "lib/modules/6.1.0-1-amd64/kernel",
            "lib/modules/6.1.0-1-amd64/kernel/mod.ko",
            "proc",
        ]
    );
    let get = |n: &str| entries.iter().find(|e| e.0 == n).expect("entry present");
    assert_eq!(get("bin").1, 0o040_755);
    assert_eq!(get("proc").1, 0o040_555);
    assert_eq!(get("bin/sh").1, 0o120_777);
    assert_eq!(get("dev/console").1, 0o020_600);
    assert_eq!(get("dev/console").7, (5, 1));
    assert_eq!(get("init").7, (0, 0));
    assert_eq!(get("bin/sh").6, b"/bin/busybox");
    assert_eq!(get("init").1, 0o100_755);
    assert_eq!(get("init").6, b"\x7fELF pretend init");
    assert_eq!(get("etc/havms/modules.list").1, 0o100_644);
    assert_eq!(
        get("lib/modules/6.1.0-1-amd64/kernel/mod.ko").6.len(),
        100_000
    );
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.2, i as u32 + 1, "inode numbers follow the order");
        assert_eq!((e.3, e.4, e.5), (0, 0, 1234), "{}: uid/gid/mtime", e.0);
    }
}

#[test]
fn same_inputs_give_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("a.img");
    let second = dir.path().join("b.img");
    write_initramfs(&sample(dir.path()), &first, 0).expect("first");
    // Rewrite the inputs (new mtimes on disk) and build a fresh tree: nothing may leak in.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write_initramfs(&sample(dir.path()), &second, 0).expect("second");
    let a = std::fs::read(&first).expect("read");
    let b = std::fs::read(&second).expect("read");
    assert_eq!(a, b);
    // The gzip header carries no time and no name.
    assert_eq!(&a[4..8], &[0, 0, 0, 0], "gzip mtime");
    assert_eq!(a[3] & 0x08, 0, "gzip FNAME flag");
}

#[test]
fn different_mtime_gives_different_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.img");
    let b = dir.path().join("b.img");
    write_initramfs(&sample(dir.path()), &a, 0).expect("a");
    write_initramfs(&sample(dir.path()), &b, 1).expect("b");
    assert_ne!(
        std::fs::read(&a).expect("read"),
        std::fs::read(&b).expect("read")
    );
}

#[test]
fn missing_source_file_names_it() {
    let mut t = Tree::new();
    t.add_file("/x", 0o644, Contents::Path("/nonexistent/havms/x".into()))
        .expect("add");
    let dir = tempfile::tempdir().expect("tempdir");
    let err = write_initramfs(&t, &dir.path().join("o.img"), 0).expect_err("missing file");
    assert!(err.to_string().contains("/nonexistent/havms/x"), "{err}");
}
