//! The kernel command line: the `havms.*` arguments of docs/node-runtime.md, and the
//! `module.param=value` pairs that modprobe would hand to a module when it loads.

/// What init takes from /proc/cmdline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelArgs {
    /// `havms.extra_modules=a,b`: loaded after /etc/havms/modules.list.
    pub extra_modules: Vec<String>,
    /// `havms.consoles=ttyS0,tty1`; `None` means the default (ttyS0 and tty1 when present).
    pub consoles: Option<Vec<String>>,
    /// `havms.log=`: RUST_LOG for init and havmsd.
    pub log: String,
    /// `module.param=value` pairs, module names normalised (`-` -> `_`).
    pub module_params: Vec<(String, String)>,
    /// `havms.install` (the ISO's "Install HAVmS" entry): the installer runs on the first
    /// console instead of the menu.
    pub install: bool,
}

pub const DEFAULT_LOG: &str = "info";

/// Splits a command line into arguments as the kernel does: on whitespace, except inside
/// double quotes (which are removed).
pub fn split(cmdline: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has_arg = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_arg = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_arg {
                    args.push(std::mem::take(&mut cur));
                    has_arg = false;
                }
            }
            c => {
                cur.push(c);
                has_arg = true;
            }
        }
    }
    if has_arg {
        args.push(cur);
    }
    args
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Module names spell `-` and `_` interchangeably; the kernel reports `_`.
pub fn normalize_module(name: &str) -> String {
    name.replace('-', "_")
}

pub fn parse(cmdline: &str) -> KernelArgs {
    let mut out = KernelArgs {
        log: DEFAULT_LOG.to_string(),
        ..KernelArgs::default()
    };
    for arg in split(cmdline) {
        if arg == "havms.install" {
            out.install = true;
            continue;
        }
        let Some((key, value)) = arg.split_once('=') else {
            continue;
        };
        match key {
            "havms.extra_modules" => out.extra_modules.extend(list(value)),
            "havms.consoles" => out.consoles = Some(list(value)),
            "havms.log" if !value.is_empty() => out.log = value.to_string(),
            _ => {
                if let Some((module, param)) = key.split_once('.') {
                    if !module.is_empty() && !param.is_empty() && !module.starts_with("havms") {
                        out.module_params
                            .push((normalize_module(module), format!("{param}={value}")));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_with_quotes() {
        assert_eq!(
            split("console=ttyS0  a=\"b c\" \"\" x\n"),
            vec!["console=ttyS0", "a=b c", "", "x"]
        );
    }

    #[test]
    fn parses_havms_args() {
        let a = parse(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 havms.node=a havms.extra_modules=foo,,bar-baz \
             havms.consoles=ttyS1 havms.log=debug kvm.ignore_msrs=1 kvm-amd.nested=1",
        );
        assert_eq!(a.extra_modules, vec!["foo", "bar-baz"]);
        assert!(!a.install);
        assert!(parse("quiet havms.install").install);
        assert_eq!(a.consoles, Some(vec!["ttyS1".to_string()]));
        assert_eq!(a.log, "debug");
        assert_eq!(
            a.module_params,
            vec![
                ("kvm".to_string(), "ignore_msrs=1".to_string()),
                ("kvm_amd".to_string(), "nested=1".to_string())
            ]
        );
    }

    #[test]
    fn defaults() {
        let a = parse("console=ttyS0 quiet havms.log=");
        assert_eq!(a.consoles, None);
        assert!(a.extra_modules.is_empty());
        assert_eq!(a.log, "info");
        // A later consoles= wins, an empty one means "no menu at all".
        assert_eq!(parse("havms.consoles=").consoles, Some(vec![]));
    }
}
