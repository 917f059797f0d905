//! Parses `modules.list`: the kernel modules init loads at boot, in order, with their parameters.
//!
//! Format, one module a line: `NAME [PARAM=VALUE ...]`, `#` starts a comment. The entry
//! `kvm-vendor` stands for `kvm_amd` or `kvm_intel`, which init picks from the CPU at boot.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};

/// The list entry that init expands to the CPU's KVM module.
pub const KVM_VENDOR: &str = "kvm-vendor";
/// What `kvm-vendor` may become at boot: the image holds both.
pub const KVM_VENDOR_MODULES: [&str; 2] = ["kvm_amd", "kvm_intel"];

/// One line of `modules.list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    /// The name as written (`-` and `_` are the same to the kernel; see [`normalize`]).
    pub name: String,
    /// Parameters passed at load time, as written (`key=value` or a bare `key`).
    pub params: Vec<String>,
    /// 1-based line number, for error messages.
    pub line: usize,
}

/// The kernel treats `-` and `_` in module names alike; we compare names in the `_` form.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn valid_param(param: &str) -> bool {
    let key = param.split_once('=').map_or(param, |(k, _)| k);
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Parses the text of a modules list; `file` only names it in errors.
pub fn parse(text: &str, file: &Path) -> Result<Vec<ModuleEntry>> {
    let err = |line: usize, reason: String| Error::ModulesList {
        file: file.to_path_buf(),
        line,
        reason,
    };
    let mut entries = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let content = raw.split_once('#').map_or(raw, |(before, _)| before);
        let mut words = content.split_whitespace();
        let Some(name) = words.next() else {
            continue;
        };
        if !valid_name(name) {
            return Err(err(
                line,
                format!("{name:?} is not a module name (letters, digits, - and _ only)"),
            ));
        }
        let params: Vec<String> = words.map(str::to_string).collect();
        if let Some(bad) = params.iter().find(|p| !valid_param(p)) {
            return Err(err(
                line,
                format!("{bad:?} is not a module parameter (expected key=value)"),
            ));
        }
        if let Some(first) = seen.insert(normalize(name), line) {
            return Err(err(
                line,
                format!("module {name} is listed twice (first on line {first})"),
            ));
        }
        entries.push(ModuleEntry {
            name: name.to_string(),
            params,
            line,
        });
    }
    Ok(entries)
}

/// Reads and parses a modules list file.
pub fn read(path: &Path) -> Result<Vec<ModuleEntry>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<ModuleEntry>> {
        parse(text, Path::new("image/modules.list"))
    }

    #[test]
    fn names_params_and_comments() {
        let entries =
            p("# header\n\nkvm ignore_msrs=1 report_ignored_msrs=0  # quiet\n  kvm-vendor\ntun\n")
                .expect("valid list");
        assert_eq!(
            entries,
            vec![
                ModuleEntry {
                    name: "kvm".into(),
                    params: vec!["ignore_msrs=1".into(), "report_ignored_msrs=0".into()],
                    line: 3
                },
                ModuleEntry {
                    name: "kvm-vendor".into(),
                    params: vec![],
                    line: 4
                },
                ModuleEntry {
                    name: "tun".into(),
                    params: vec![],
                    line: 5
                },
            ]
        );
    }

    #[test]
    fn bad_name_names_file_and_line() {
        let err = p("tun\nvirtio/net\n").expect_err("slash is not allowed");
        let msg = err.to_string();
        assert!(msg.starts_with("image/modules.list:2: "), "{msg}");
        assert!(msg.contains("virtio/net"), "{msg}");
    }

    #[test]
    fn bad_param_is_rejected() {
        let err = p("kvm =1\n").expect_err("empty key");
        assert!(
            err.to_string().starts_with("image/modules.list:1: "),
            "{err}"
        );
    }

    #[test]
    fn duplicate_with_dash_and_underscore_is_rejected() {
        let err = p("virtio_rng\n\nvirtio-rng\n").expect_err("same module twice");
        let msg = err.to_string();
        assert!(msg.starts_with("image/modules.list:3: "), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn normalize_maps_dashes() {
        assert_eq!(normalize("nls_iso8859-1"), "nls_iso8859_1");
        assert_eq!(normalize("kvm-amd"), "kvm_amd");
    }
}
