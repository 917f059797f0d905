//! /etc/havms/modules.list: which modules to load, in order, with their parameters.
//!
//! One module per line, parameters after the name (`kvm ignore_msrs=1`), `#` starts a comment.
//! The entry `kvm-vendor` stands for kvm_amd or kvm_intel, whichever the CPU supports.

/// The special list entry that `crate::kvm` resolves from the CPU flags.
pub const KVM_VENDOR: &str = "kvm-vendor";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as written (used in messages, so they match what the operator typed).
    pub name: String,
    /// Space-separated `param=value` pairs, as finit_module takes them.
    pub params: String,
    /// 1-based line in the list, 0 for entries from the kernel command line.
    pub line: usize,
}

pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let line = raw.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let name = words.next()?;
            Some(Entry {
                name: name.to_string(),
                params: words.collect::<Vec<_>>().join(" "),
                line: i + 1,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_params_and_comments() {
        let text = "# KVM\nkvm ignore_msrs=1 report_ignored_msrs=0  # quiet\n\n  kvm-vendor\n#virtio_net\nvirtio-net\n";
        let e = parse(text);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].name, "kvm");
        assert_eq!(e[0].params, "ignore_msrs=1 report_ignored_msrs=0");
        assert_eq!(e[0].line, 2);
        assert_eq!(e[1].name, KVM_VENDOR);
        assert_eq!(crate::cmdline::normalize_module(&e[2].name), "virtio_net");
        assert_eq!(e[2].params, "");
    }
}
