//! Every way a configuration can be wrong, each checked for the file:line it reports.

use super::*;

const GOOD: &str = "\
cluster: demo
nodes:
  - name: a
    preferred_role: primary
    link: { interface: eth1, address: 10.99.0.1/24 }
    lan: { interface: eth0, bridge: br0, address: 192.168.77.11/24, gateway: 192.168.77.1 }
  - name: b
    preferred_role: secondary
    link: { interface: eth1, address: 10.99.0.2/24 }
    lan: { interface: eth0, dhcp: true }
witness: 192.168.77.1
timings: { heartbeat_ms: 100, dead_after_ms: 500, fence_ms: 2000, epoch_ms: 50 }
vms:
  - name: web
    vcpus: 2
    memory_mib: 256
    kernel: /var/lib/havms/images/vmlinuz
    initramfs: /var/lib/havms/images/web.cpio.gz
    cmdline: console=ttyS0
    disks:
      - path: /var/lib/havms/disks/web.img
    nics:
      - mac: 52:54:00:12:34:56
    preferred_node: a
";

/// Parses `GOOD` with `from` replaced by `to` and returns the error's line and reason.
fn broken(from: &str, to: &str) -> (Option<usize>, String) {
    assert!(GOOD.contains(from), "test bug: `{from}` not in GOOD");
    let text = GOOD.replacen(from, to, 1);
    let e = parse(&text, "/x/havms.yaml").expect_err("should be rejected");
    assert_eq!(e.file, "/x/havms.yaml");
    assert!(e.to_string().starts_with("/x/havms.yaml:"), "{e}");
    (e.line, e.reason)
}

#[test]
fn good_config_parses() {
    let c = parse(GOOD, "g.yaml").unwrap();
    assert_eq!(c.cluster, "demo");
    assert_eq!(c.peer_of("a").unwrap().name, "b");
    assert_eq!(c.peer_of("b").unwrap().name, "a");
    assert!(c.peer_of("zz").is_none());
    assert_eq!(c.node("b").unwrap().lan.addressing, LanAddressing::Dhcp);
    assert_eq!(c.node("a").unwrap().lan.bridge, "br0");
    assert_eq!(c.vms[0].vcpus, 2);
    assert!(c.vms[0].autostart);
    assert_eq!(c.witness_for("b"), Some("192.168.77.1".parse().unwrap()));
}

#[test]
fn defaults_apply() {
    let text = GOOD.replace(
        "timings: { heartbeat_ms: 100, dead_after_ms: 500, fence_ms: 2000, epoch_ms: 50 }\n",
        "",
    );
    let c = parse(&text, "g.yaml").unwrap();
    assert_eq!(c.timings, Timings::default());
}

#[test]
fn example_file_in_repo_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/havms.yaml");
    load(&path).unwrap();
}

#[test]
fn unknown_key_names_its_line() {
    let (line, reason) = broken("    vcpus: 2\n", "    vcpus: 2\n    colour: blue\n");
    assert_eq!(line, Some(16));
    assert!(reason.contains("unknown field `colour`"), "{reason}");
}

#[test]
fn unknown_top_level_key() {
    let (line, reason) = broken("witness:", "witnes:");
    assert_eq!(line, Some(11));
    assert!(reason.contains("witnes"), "{reason}");
}

#[test]
fn syntax_error_names_its_line() {
    let (line, _) = broken("  - name: b\n", "  - name: b\n   bad indent: [\n");
    assert!(line.is_some_and(|l| (7..=9).contains(&l)), "{line:?}");
}

#[test]
fn bad_values_name_their_line() {
    let cases = [
        ("10.99.0.2/24", "10.99.0.2/40", 9, "prefix length"),
        ("52:54:00:12:34:56", "52:54:00:12:34", 23, "MAC"),
        ("cluster: demo", "cluster: Demo", 1, "not a valid name"),
        (
            "preferred_role: secondary",
            "preferred_role: boss",
            8,
            "unknown variant",
        ),
        ("memory_mib: 256", "memory_mib: lots", 16, "invalid type"),
        ("witness: 192.168.77.1", "witness: 300.1.1.1", 11, "invalid"),
    ];
    for (from, to, want, words) in cases {
        let (line, reason) = broken(from, to);
        assert_eq!(line, Some(want), "{to}: {reason}");
        assert!(reason.contains(words), "{to}: {reason}");
    }
}

#[test]
fn lan_addressing_rules() {
    let (line, reason) = broken(
        "lan: { interface: eth0, dhcp: true }",
        "lan: { interface: eth0 }",
    );
    assert_eq!(line, Some(10));
    assert!(reason.contains("dhcp"), "{reason}");
    let (_, reason) = broken("gateway: 192.168.77.1", "gateway: 10.1.1.1");
    assert!(reason.contains("not another host"), "{reason}");
}

#[test]
fn cross_checks_name_their_line() {
    let cases = [
        ("  - name: b\n", "  - name: a\n", 7, "used twice"),
        (
            "preferred_role: secondary",
            "preferred_role: primary",
            8,
            "one node must",
        ),
        (
            "address: 10.99.0.2/24",
            "address: 10.98.0.2/24",
            9,
            "same subnet",
        ),
        (
            "address: 10.99.0.2/24",
            "address: 10.99.0.1/24",
            9,
            "both nodes",
        ),
        (
            "link: { interface: eth1, address: 10.99.0.2",
            "link: { interface: eth0, address: 10.99.0.2",
            10,
            "share",
        ),
        (
            "dead_after_ms: 500",
            "dead_after_ms: 200",
            12,
            "at least 3 heartbeats",
        ),
        ("fence_ms: 2000", "fence_ms: 100", 12, "fence_ms"),
        ("epoch_ms: 50", "epoch_ms: 1", 12, "epoch_ms"),
        (
            "preferred_node: a",
            "preferred_node: c",
            24,
            "not one of the nodes",
        ),
        ("vcpus: 2", "vcpus: 0", 15, "vcpus"),
        ("memory_mib: 256", "memory_mib: 1", 16, "memory_mib"),
        (
            "kernel: /var/lib/havms/images/vmlinuz",
            "kernel: vmlinuz",
            17,
            "absolute",
        ),
        (
            "path: /var/lib/havms/disks/web.img",
            "path: web.img",
            21,
            "absolute",
        ),
    ];
    for (from, to, want, words) in cases {
        let (line, reason) = broken(from, to);
        assert_eq!(line, Some(want), "{to}: {reason}");
        assert!(reason.contains(words), "{to}: {reason}");
    }
}

#[test]
fn node_count_and_duplicates() {
    let one_node = GOOD.replace(
        "  - name: b\n    preferred_role: secondary\n    link: { interface: eth1, address: 10.99.0.2/24 }\n    lan: { interface: eth0, dhcp: true }\n",
        "",
    );
    let e = parse(&one_node, "f").unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(e.reason.contains("exactly 2 nodes"));

    let two_vms = GOOD.to_string()
        + "  - name: web\n    memory_mib: 64\n    kernel: /k\n    preferred_node: b\n    nics: [{ mac: 52:54:00:12:34:56 }]\n";
    let e = parse(&two_vms, "f").unwrap_err();
    assert_eq!(e.line, Some(25));
    assert!(e.reason.contains("VM name `web` is used twice"), "{e}");

    let dup_mac = GOOD.to_string()
        + "  - name: db\n    memory_mib: 64\n    kernel: /k\n    preferred_node: b\n    nics: [{ mac: 52:54:00:12:34:56 }]\n";
    let e = parse(&dup_mac, "f").unwrap_err();
    assert_eq!(e.line, Some(29));
    assert!(e.reason.contains("MAC"), "{e}");
}

#[test]
fn file_level_errors() {
    let dir = std::env::temp_dir().join(format!("havms-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.yaml");
    let e = load(&missing).unwrap_err();
    assert_eq!(e.line, None);
    assert!(e
        .to_string()
        .starts_with(&format!("{}: cannot read", missing.display())));

    let empty = dir.join("empty.yaml");
    std::fs::write(&empty, "  \n").unwrap();
    assert!(load(&empty).unwrap_err().reason.contains("empty"));

    let binary = dir.join("binary.yaml");
    std::fs::write(&binary, b"cluster: demo\nnodes: \xff\xfe\n").unwrap();
    let e = load(&binary).unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(e.reason.contains("UTF-8"));

    let e = load(Path::new("/dev/zero")).unwrap_err();
    assert!(e.reason.contains("too large"), "{e}");

    let not_a_map = dir.join("list.yaml");
    std::fs::write(&not_a_map, "- 1\n- 2\n").unwrap();
    assert!(load(&not_a_map).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn node_name_sources() {
    let dir = std::env::temp_dir().join(format!("havms-node-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("node");
    assert_eq!(node_name("quiet", &f), None);
    std::fs::write(&f, "b\n").unwrap();
    assert_eq!(node_name("quiet", &f).as_deref(), Some("b"));
    assert_eq!(node_name("quiet havms.node=a", &f).as_deref(), Some("a"));
    assert_eq!(node_name("havms.node=BAD", &f), None);
    std::fs::write(&f, "../etc\n").unwrap();
    assert_eq!(node_name("", &f), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn metrics_port_and_device_counts() {
    let c = parse(GOOD, "g.yaml").unwrap();
    assert_eq!(c.metrics_port, 9464);
    let off = GOOD.replace(
        "witness: 192.168.77.1\n",
        "witness: 192.168.77.1\nmetrics_port: 0\n",
    );
    assert_eq!(parse(&off, "g.yaml").unwrap().metrics_port, 0);
    let many: String = (0..16)
        .map(|i| format!("      - mac: 52:54:00:12:35:{i:02x}\n"))
        .collect();
    let (line, reason) = broken("      - mac: 52:54:00:12:34:56\n", &many);
    assert_eq!(line, Some(22), "{reason}");
    assert!(
        reason.contains("VM web: 1 disks and 16 NICs: at most 16 devices"),
        "{reason}"
    );
}

#[test]
fn a_pair_with_vms_needs_a_witness_for_each_node() {
    // b's LAN uses DHCP: without the top-level witness it has none.
    let (line, reason) = broken("witness: 192.168.77.1\n", "");
    assert_eq!(line, Some(10), "{reason}");
    assert!(reason.contains("node b: no witness"), "{reason}");
    // a's static gateway serves as its witness: a b with a gateway too is fine.
    let text = GOOD.replacen("witness: 192.168.77.1\n", "", 1).replacen(
        "lan: { interface: eth0, dhcp: true }",
        "lan: { interface: eth0, address: 192.168.77.12/24, gateway: 192.168.77.1 }",
        1,
    );
    let c = parse(&text, "f").expect("gateways are witnesses");
    assert_eq!(c.witness_for("b"), Some("192.168.77.1".parse().unwrap()));
    // Without VMs there is nothing to take over: no witness needed.
    let idle = GOOD.replacen("witness: 192.168.77.1\n", "", 1);
    let idle = &idle[..idle.find("vms:").unwrap()];
    parse(idle, "f").expect("a pair without VMs needs no witness");
}

/// Every error but an empty file's carries a line, and that line is inside the file.
fn assert_line_inside(text: &str) -> ConfigError {
    let e = parse(text, "f").expect_err("should be rejected");
    let lines = text.lines().count().max(1);
    assert!(
        e.line.is_some_and(|l| (1..=lines).contains(&l)),
        "{e} (the file has {lines} lines)"
    );
    e
}

#[test]
fn a_lone_cr_does_not_push_the_line_past_the_end() {
    // Issue 10, defect 1: serde_yaml counts a lone CR as a line break (line 6 here).
    let text = "cluster: demo\r\r\r\r\rnodes: 5\n";
    assert_eq!(
        hex_of(text),
        "636c75737465723a2064656d6f0d0d0d0d0d6e6f6465733a20350a"
    );
    let e = assert_line_inside(text);
    assert_eq!(e.line, Some(1), "{e}");
    // CRLF files count one line per CRLF, as editors show them.
    let crlf = GOOD
        .replace('\n', "\r\n")
        .replacen("vcpus: 2", "vcpus: two", 1);
    assert_eq!(assert_line_inside(&crlf).line, Some(15));
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_value_folded_across_lines_still_names_its_line() {
    // Issue 10, defect 2: the value parses as "br 0", which is written nowhere in the file.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/havms.yaml");
    let example = std::fs::read_to_string(path).unwrap();
    assert!(example.contains("bridge: br0"));
    let text = example.replacen("bridge: br0", "bridge: \"br\n      0\"", 1);
    let e = assert_line_inside(&text);
    assert_eq!(e.line, Some(11), "{e}");
    assert!(e.reason.contains("lan bridge interface `br 0`"), "{e}");
    // Escaped values too: `\x61` is `a`, a second node `a`.
    let e = assert_line_inside(&GOOD.replacen("  - name: b\n", "  - name: \"\\x61\"\n", 1));
    assert!(e.reason.contains("used twice"), "{e}");
    // A value that is not written at all is pointed at by its item.
    let e = assert_line_inside(&GOOD.replacen("    vcpus: 2\n", "    vcpus: 0x0\n", 1));
    assert_eq!(e.line, Some(15), "{e}");
}

#[test]
fn deeply_nested_flow_collections_are_refused_before_parsing() {
    // Found by the config fuzz target: 1 KiB of `{` took a second to scan, and the time grows
    // with the square of the depth. Refused at once, at the line where the limit is passed.
    let start = std::time::Instant::now();
    let text = format!("cluster: demo\nnodes: {}\n", "[".repeat(1 << 19));
    let e = parse(&text, "/x/havms.yaml").expect_err("refused");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.reason.contains("nested more than 64 deep"), "{e}");
    let e = parse(&"{a: ".repeat(20_000), "/x/havms.yaml").expect_err("refused");
    assert_eq!(e.line, Some(1), "{e}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    // Brackets in quotes and comments do not count; the example nests within the limit.
    let quoted = GOOD.replacen(
        "cmdline: console=ttyS0",
        &format!("cmdline: \"{}\" # {}", "[".repeat(100), "{".repeat(100)),
        1,
    );
    parse(&quoted, "/x/havms.yaml").expect("brackets in quotes and comments are no nesting");
}
