//! The havms.yaml the harness writes onto test nodes' data disks.
//!
//! Same shape as examples/havms.yaml, but with static LAN addresses on both nodes: the harness
//! LAN has no DHCP server.

/// Link (eth1) and LAN (br0 over eth0) addresses of node `n` (1 = a, 2 = b).
pub fn addresses(n: u8) -> (String, String) {
    (
        format!("10.99.0.{n}/24"),
        format!("192.168.77.{}/24", 10 + n),
    )
}

/// The test config's clocks. `dead_after` is three times the default's 500 ms: a nested TCG
/// node (one emulated CPU running its engines, their guests and a full sync) now and then
/// stalls whole, sending nothing on any path, keepalives included, for 600-815 ms (seen in
/// `ha-two-vms` and `ha-supervisor-restart`, docs/testing.md); a real node does not.
pub const HEARTBEAT_MS: u64 = 100;
pub const DEAD_AFTER_MS: u64 = 1500;
pub const FENCE_MS: u64 = 2000;
pub const EPOCH_MS: u64 = 50;

/// The pair configuration: nodes a (primary) and b (secondary), no VMs.
pub fn pair_yaml() -> String {
    let (link_a, lan_a) = addresses(1);
    let (link_b, lan_b) = addresses(2);
    format!(
        "\
cluster: demo
nodes:
  - name: a
    preferred_role: primary
    link: {{ interface: eth1, address: {link_a} }}
    lan: {{ interface: eth0, bridge: br0, address: {lan_a}, gateway: 192.168.77.1 }}
  - name: b
    preferred_role: secondary
    link: {{ interface: eth1, address: {link_b} }}
    lan: {{ interface: eth0, bridge: br0, address: {lan_b}, gateway: 192.168.77.1 }}
witness: 192.168.77.1
timings: {{ heartbeat_ms: {HEARTBEAT_MS}, dead_after_ms: {DEAD_AFTER_MS}, fence_ms: {FENCE_MS}, epoch_ms: {EPOCH_MS} }}
vms: []
"
    )
}

/// `pair_yaml` with `line` inserted so that it becomes line number `at` (1-based).
pub fn with_line_at(yaml: &str, at: usize, line: &str) -> String {
    let mut lines: Vec<&str> = yaml.lines().collect();
    let i = at.saturating_sub(1).min(lines.len());
    lines.insert(i, line);
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_config_has_both_nodes_with_link_and_static_lan() {
        let y = pair_yaml();
        assert!(y.contains("address: 10.99.0.1/24"));
        assert!(y.contains("address: 10.99.0.2/24"));
        assert!(y.contains("address: 192.168.77.11/24"));
        assert!(y.contains("address: 192.168.77.12/24"));
        assert!(!y.contains("dhcp"));
    }

    #[test]
    fn pair_config_is_valid_for_the_nodes() {
        let cfg = havms_config::parse(&pair_yaml(), "pair.yaml").unwrap();
        assert_eq!(cfg.nodes.len(), 2);
        assert!(cfg.node("a").is_some() && cfg.node("b").is_some());
    }

    #[test]
    fn inserted_line_lands_on_the_requested_line_number() {
        let y = with_line_at(&pair_yaml(), 2, "colour: blue");
        assert_eq!(y.lines().nth(1), Some("colour: blue"));
        assert_eq!(y.lines().next(), Some("cluster: demo"));
        assert_eq!(y.lines().nth(2), Some("nodes:"));
    }
}
