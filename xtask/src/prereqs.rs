//! Host prerequisites: the Debian packages each entry point needs. Missing ones are installed
//! with apt when we are root (saying what and why), else the error gives the command to run.
//!
//! The test nodes' emulator: the nodes run nested KVM on QEMU's TCG emulation of AMD SVM.
//! Debian 12's own QEMU (7.2) is the default. `HAVMS_NODE_QEMU=backports` asks for QEMU 10
//! from bookworm-backports instead (`apt-get install -t bookworm-backports`, whose apt source
//! is added if no source has it; seabios comes along): its SVM emulation has years of fixes,
//! but here nested guests booted markedly slower under it (docs/testing.md, "Node stalls").

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

/// A group of packages and the job that needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Linking our static node binaries (cc and the static glibc).
    Build,
    /// Unpacking packages and making the hybrid ISO.
    Image,
    /// Checking the Buildroot tree against Buildroot's own tools (kconfig is built with gcc,
    /// `utils/check-package` is Python with libmagic, flake8 and shellcheck).
    Buildroot,
    /// Booting nodes under QEMU (BIOS and UEFI firmware, disk images, busybox for fixtures);
    /// QEMU itself is [`QEMU_PACKAGE`] (with `HAVMS_NODE_QEMU=backports`: at least [`QEMU_MIN_MAJOR`]).
    Qemu,
    /// The fuzz targets: libfuzzer-sys compiles libFuzzer, which is C++.
    Fuzz,
}

impl Need {
    /// The packages installed from the distribution's own suites.
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Need::Build => &["gcc", "libc6-dev"],
            Need::Image => &[
                "dpkg",
                "xorriso",
                "grub-pc-bin",
                "grub-efi-amd64-bin",
                "mtools",
                "dosfstools",
            ],
            Need::Buildroot => &[
                "make",
                "gcc",
                "perl",
                "rsync",
                "git",
                "python3-magic",
                "flake8",
                "shellcheck",
            ],
            Need::Qemu => &[
                QEMU_PACKAGE,
                "seabios",
                "ovmf",
                "busybox-static",
                "cpio",
                "e2fsprogs",
                "dosfstools",
            ],
            Need::Fuzz => &["g++"],
        }
    }

    pub fn purpose(self) -> &'static str {
        match self {
            Need::Build => "building the static node binaries",
            Need::Image => "building the boot image",
            Need::Buildroot => "checking the Buildroot tree",
            Need::Qemu => "booting QEMU test nodes",
            Need::Fuzz => "building the fuzz targets (libFuzzer)",
        }
    }
}

/// The emulator of the test nodes.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
/// Its binary, as the harness runs it.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The oldest QEMU the test nodes are run and measured with (docs/testing.md).
pub const QEMU_MIN_MAJOR: u32 = 10;
/// Debian 12's suite that has it (QEMU 10.0 backported from Debian 13).
pub const BACKPORTS: &str = "bookworm-backports";
/// The apt source `prereqs` writes when no source lists [`BACKPORTS`].
pub const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/havms-bookworm-backports.sources";
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const APT_SOURCES_LIST: &str = "/etc/apt/sources.list";
const APT_SOURCES_DIR: &str = "/etc/apt/sources.list.d";

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// `dpkg-query -W -f=FORMAT package`, or None when it is not known to dpkg.
fn dpkg_query(package: &str, format: &str) -> Result<Option<String>> {
    let out = Command::new("dpkg-query")
        .args(["-W", &format!("-f={format}"), package])
        .output()
        .context("cannot run dpkg-query: xtask installs its tools with Debian's apt")?;
    // An unknown package makes dpkg-query exit 1.
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn installed(package: &str) -> Result<bool> {
    // "ii " = installed.
    Ok(dpkg_query(package, "${db:Status-Abbrev}")?.is_some_and(|s| s.starts_with("ii")))
}

/// The installed version of `package` (Debian's form, e.g. `1:10.0.2+ds-2+deb13u1~bpo12+1`).
fn installed_version(package: &str) -> Result<Option<String>> {
    if !installed(package)? {
        return Ok(None);
    }
    dpkg_query(package, "${Version}")
}

/// The upstream major version of a Debian version string: `1:10.0.2+ds-2` is 10.
pub fn upstream_major(debian_version: &str) -> Option<u32> {
    let upstream = debian_version
        .split_once(':')
        .map_or(debian_version, |(_, v)| v);
    let digits: String = upstream.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The version in `qemu-system-x86_64 --version` ("QEMU emulator version 10.0.2 (Debian ...)").
pub fn qemu_binary_version(version_output: &str) -> Option<&str> {
    version_output
        .lines()
        .next()?
        .strip_prefix("QEMU emulator version ")?
        .split_whitespace()
        .next()
}

fn is_root() -> Result<bool> {
    // /proc/self belongs to our effective uid.
    let meta = std::fs::metadata("/proc/self").context("cannot stat /proc/self")?;
    Ok(meta.uid() == 0)
}

fn apt_get(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("cannot run apt-get {}", args.join(" ")))?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn apt_update(force: bool) -> Result<()> {
    if !APT_UPDATED.swap(true, Ordering::SeqCst) || force {
        apt_get(&["update", "-q"])?;
    }
    Ok(())
}

/// Makes sure every package of `needs` is installed, and with [`Need::Qemu`] and
/// `HAVMS_NODE_QEMU=backports` a QEMU of at least [`QEMU_MIN_MAJOR`].
pub fn ensure(needs: &[Need]) -> Result<()> {
    let mut missing = BTreeSet::new();
    let mut purposes = Vec::new();
    for need in needs {
        let mut any = false;
        for package in need.packages() {
            if !installed(package)? {
                missing.insert(*package);
                any = true;
            }
        }
        if any {
            purposes.push(need.purpose());
        }
    }
    if !missing.is_empty() {
        install(&missing.into_iter().collect::<Vec<_>>(), &purposes)?;
    }
    if needs.contains(&Need::Qemu) && backports_wanted() {
        ensure_qemu()?;
    }
    Ok(())
}

/// `HAVMS_NODE_QEMU=backports`: the nodes run on QEMU 10 from bookworm-backports.
fn backports_wanted() -> bool {
    std::env::var("HAVMS_NODE_QEMU").is_ok_and(|v| v == "backports")
}

fn install(list: &[&str], purposes: &[&str]) -> Result<()> {
    let command = format!(
        "apt-get install -y --no-install-recommends {}",
        list.join(" ")
    );
    if !is_root()? {
        bail!(
            "missing Debian packages {} (needed for {}); as root run: apt-get update && {command}",
            list.join(", "),
            purposes.join(", ")
        );
    }
    log::info!(
        "xtask: installing {} (needed for {})",
        list.join(", "),
        purposes.join(", ")
    );
    apt_update(false)?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(list);
    apt_get(&args)?;
    for package in list {
        if !installed(package)? {
            bail!("{package} is still not installed after `{command}`");
        }
    }
    Ok(())
}

/// The distribution's codename from /etc/os-release (`bookworm` on Debian 12).
fn codename() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
}

/// QEMU at least [`QEMU_MIN_MAJOR`]: installed or upgraded (from bookworm-backports on Debian
/// 12), then the binary the harness runs is checked.
fn ensure_qemu() -> Result<()> {
    let version = installed_version(QEMU_PACKAGE)?;
    let new_enough = |v: &Option<String>| {
        v.as_deref()
            .and_then(upstream_major)
            .is_some_and(|m| m >= QEMU_MIN_MAJOR)
    };
    if !new_enough(&version) {
        let have = version
            .as_deref()
            .map_or("not installed".to_string(), |v| format!("{v} installed"));
        let why = format!(
            "{QEMU_PACKAGE} >= {QEMU_MIN_MAJOR} for the test nodes ({have}; their nested KVM \
             runs on QEMU's TCG emulation of SVM, docs/testing.md)"
        );
        let bookworm = codename().as_deref() == Some("bookworm");
        // `-t SUITE` raises SUITE for this one command: qemu-system-x86 and what it needs newer
        // (qemu-system-common, qemu-system-data, seabios) come from backports, and so would a
        // library that is not installed yet and has a backport. `PACKAGE/SUITE` alone is not
        // enough: on a machine without QEMU apt keeps bookworm's qemu-system-common and fails.
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        if bookworm {
            args.extend(["-t", BACKPORTS]);
        }
        args.push(QEMU_PACKAGE);
        let command = format!("apt-get {}", args.join(" "));
        if !is_root()? {
            let source = if bookworm && !backports_listed() {
                format!(
                    "write {BACKPORTS_SOURCES} with:\n{}\nthen ",
                    backports_stanza(&keyring())
                )
            } else {
                String::new()
            };
            bail!("{why}; as root {source}run: apt-get update && {command}");
        }
        if bookworm {
            let added = add_backports_source()?;
            // A new source needs its package lists, even if apt-get update ran already.
            apt_update(added)?;
            log::info!("xtask: installing {QEMU_PACKAGE} from {BACKPORTS} (needed: {why})");
        } else {
            apt_update(false)?;
            log::info!("xtask: installing {QEMU_PACKAGE} (needed: {why})");
        }
        apt_get(&args)?;
        let after = installed_version(QEMU_PACKAGE)?;
        if !new_enough(&after) {
            bail!(
                "{QEMU_PACKAGE} is {} after `{command}`; the test nodes need QEMU >= \
                 {QEMU_MIN_MAJOR} (docs/testing.md)",
                after.as_deref().unwrap_or("not installed")
            );
        }
    }
    // What runs is what counts: the first qemu-system-x86_64 on PATH.
    let out = Command::new(QEMU_BINARY)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {QEMU_BINARY} --version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let running = qemu_binary_version(&text);
    match running.and_then(upstream_major) {
        Some(major) if major >= QEMU_MIN_MAJOR => {
            log::debug!("xtask: {QEMU_BINARY} {}", running.unwrap_or_default());
            Ok(())
        }
        _ => bail!(
            "{QEMU_BINARY} on PATH is {} ({:?}); the test nodes need QEMU >= {QEMU_MIN_MAJOR} \
             (docs/testing.md)",
            running.unwrap_or("of unknown version"),
            text.lines().next().unwrap_or_default()
        ),
    }
}

/// The apt source files: /etc/apt/sources.list and sources.list.d/*.{list,sources}.
fn apt_source_files() -> Vec<(std::path::PathBuf, String)> {
    let mut paths = vec![Path::new(APT_SOURCES_LIST).to_path_buf()];
    if let Ok(dir) = std::fs::read_dir(APT_SOURCES_DIR) {
        let mut more: Vec<_> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        more.sort();
        paths.extend(more);
    }
    paths
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(&p).ok().map(|t| (p, t)))
        .collect()
}

fn backports_listed() -> bool {
    apt_source_files()
        .iter()
        .any(|(path, text)| lists_backports(path, text))
}

/// Whether an apt source file (one-line `.list` or deb822 `.sources` form) has an enabled
/// `deb` entry for bookworm-backports.
pub fn lists_backports(path: &Path, text: &str) -> bool {
    if path.extension().is_some_and(|x| x == "sources") {
        stanzas(text).iter().any(|s| {
            let field = |name: &str| field(s, name).unwrap_or_default();
            field("Types").split_whitespace().any(|t| t == "deb")
                && field("Suites").split_whitespace().any(|t| t == BACKPORTS)
                && !field("Enabled").eq_ignore_ascii_case("no")
        })
    } else {
        text.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.first() == Some(&"deb") && words.contains(&BACKPORTS)
        })
    }
}

/// deb822 stanzas (comments dropped), each a list of `Name: value` lines.
fn stanzas(text: &str) -> Vec<Vec<&str>> {
    let mut out = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            if out.last().is_some_and(|s| !s.is_empty()) {
                out.push(Vec::new());
            }
        } else if !line.trim_start().starts_with('#') {
            if let Some(last) = out.last_mut() {
                last.push(line);
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn field<'a>(stanza: &[&'a str], name: &str) -> Option<&'a str> {
    stanza.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The keyring the existing Debian sources are signed with (`Signed-By` of a deb822 stanza,
/// `[signed-by=...]` of a one-line entry), so the backports source trusts the same keys.
pub fn keyring_of(path: &Path, text: &str) -> Option<String> {
    let debian = |uri: &str| uri.trim_end_matches('/') == DEBIAN_MIRROR;
    if path.extension().is_some_and(|x| x == "sources") {
        stanzas(text).iter().find_map(|s| {
            let uris = field(s, "URIs")?;
            if !uris.split_whitespace().any(debian) {
                return None;
            }
            field(s, "Signed-By")
                .filter(|k| k.starts_with('/'))
                .map(str::to_string)
        })
    } else {
        text.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("deb ")?;
            let (options, after) = rest.trim_start().strip_prefix('[')?.split_once(']')?;
            after.split_whitespace().next().filter(|u| debian(u))?;
            options
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(str::to_string)
        })
    }
}

/// The keyring for the backports source: that of the existing Debian sources, else Debian's
/// archive keyring if it is there, else none (apt's trusted keys).
fn keyring() -> Option<String> {
    apt_source_files()
        .iter()
        .find_map(|(p, t)| keyring_of(p, t))
        .or_else(|| {
            Path::new(DEBIAN_KEYRING)
                .is_file()
                .then(|| DEBIAN_KEYRING.into())
        })
}

/// The deb822 stanza of the backports source.
pub fn backports_stanza(keyring: &Option<String>) -> String {
    let mut s = format!(
        "# Written by `cargo xtask prereqs` (HAVmS): QEMU >= {QEMU_MIN_MAJOR} for the test \
         nodes (docs/testing.md).\nTypes: deb\nURIs: {DEBIAN_MIRROR}\nSuites: {BACKPORTS}\n\
         Components: main\n"
    );
    if let Some(k) = keyring {
        s.push_str(&format!("Signed-By: {k}\n"));
    }
    s
}

/// Writes [`BACKPORTS_SOURCES`] unless some source lists bookworm-backports already; true
/// when it wrote it.
fn add_backports_source() -> Result<bool> {
    if backports_listed() {
        return Ok(false);
    }
    let text = backports_stanza(&keyring());
    log::info!("xtask: adding the {BACKPORTS} apt source {BACKPORTS_SOURCES} ({DEBIAN_MIRROR} {BACKPORTS} main)");
    std::fs::write(BACKPORTS_SOURCES, text)
        .with_context(|| format!("cannot write {BACKPORTS_SOURCES}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_itself_is_installed() {
        // Every Debian host has dpkg; a made-up name is not installed.
        assert!(installed("dpkg").expect("dpkg-query runs"));
        assert!(!installed("havms-no-such-package").expect("dpkg-query runs"));
        assert!(installed_version("dpkg").unwrap().is_some());
        assert_eq!(installed_version("havms-no-such-package").unwrap(), None);
    }

    #[test]
    fn versions_give_their_upstream_major() {
        assert_eq!(upstream_major("1:10.0.2+ds-2+deb13u1~bpo12+1"), Some(10));
        assert_eq!(upstream_major("1:7.2+dfsg-7+deb12u18+b3"), Some(7));
        assert_eq!(upstream_major("10.1.0-1"), Some(10));
        assert_eq!(upstream_major("x"), None);
        let out = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n\
                   Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n";
        assert_eq!(qemu_binary_version(out), Some("10.0.2"));
        assert_eq!(qemu_binary_version("qemu: error\n"), None);
    }

    #[test]
    fn backports_entries_are_found_in_both_source_formats() {
        let deb822 = Path::new("/e/debian.sources");
        let stock =
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                     Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
        assert!(!lists_backports(deb822, stock));
        let ours = backports_stanza(&Some(DEBIAN_KEYRING.into()));
        assert!(lists_backports(deb822, &ours), "{ours}");
        assert!(lists_backports(
            deb822,
            &format!(
                "{stock}\nTypes: deb deb-src\nURIs: http://m/debian\nSuites: bookworm-backports\n"
            )
        ));
        assert!(!lists_backports(
            deb822,
            "Types: deb\nSuites: bookworm-backports\nEnabled: no\n"
        ));
        assert!(!lists_backports(deb822, "# Suites: bookworm-backports\n"));
        let list = Path::new("/e/backports.list");
        assert!(lists_backports(
            list,
            "deb http://deb.debian.org/debian bookworm-backports main\n"
        ));
        assert!(lists_backports(
            list,
            "deb [signed-by=/k.gpg] http://m/debian bookworm-backports main contrib\n"
        ));
        assert!(!lists_backports(
            list,
            "# deb http://deb.debian.org/debian bookworm-backports main\n\
             deb-src http://deb.debian.org/debian bookworm-backports main\n"
        ));
    }

    #[test]
    fn the_backports_source_takes_the_keyring_of_the_debian_sources() {
        let deb822 = Path::new("/e/debian.sources");
        let text = "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\
                    Signed-By: /sec.gpg\n\n# a comment\nTypes: deb\nURIs: http://deb.debian.org/debian/\n\
                    Suites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/x.gpg\n";
        assert_eq!(
            keyring_of(deb822, text).as_deref(),
            Some("/usr/share/keyrings/x.gpg")
        );
        assert_eq!(
            keyring_of(deb822, "Types: deb\nURIs: http://deb.debian.org/debian\n"),
            None
        );
        let list = Path::new("/e/sources.list");
        assert_eq!(
            keyring_of(
                list,
                "deb [arch=amd64 signed-by=/k.gpg] http://deb.debian.org/debian bookworm main\n"
            )
            .as_deref(),
            Some("/k.gpg")
        );
        assert_eq!(
            keyring_of(list, "deb http://deb.debian.org/debian bookworm main\n"),
            None
        );
        assert_eq!(
            backports_stanza(&Some("/k.gpg".into())),
            "# Written by `cargo xtask prereqs` (HAVmS): QEMU >= 10 for the test nodes \
             (docs/testing.md).\nTypes: deb\nURIs: http://deb.debian.org/debian\n\
             Suites: bookworm-backports\nComponents: main\nSigned-By: /k.gpg\n"
        );
        assert!(!backports_stanza(&None).contains("Signed-By"));
    }
}
