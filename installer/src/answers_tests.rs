use super::*;

pub const GOOD: &str = super::EXAMPLE;

fn errors(text: &str) -> Vec<String> {
    parse(text, "answers.yaml")
        .expect_err("must be refused")
        .into_iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn a_good_file_parses_with_defaults() {
    let a = parse(GOOD, "answers.yaml").expect("good answers");
    assert_eq!(a.node, NodeId::A);
    assert_eq!(a.cluster, DEFAULT_CLUSTER);
    assert_eq!(a.after, After::Poweroff);
    assert_eq!(a.peer.lan_address.to_string(), "192.168.77.12/24");
    assert_eq!(a.witness, None);
    assert_eq!(a.gateway(), Some("192.168.77.1".parse().unwrap()));
}

#[test]
fn the_answers_round_trip_through_an_answer_file() {
    let a = parse(GOOD, "answers.yaml").unwrap();
    let again = parse(&a.to_yaml(), "again.yaml").expect("to_yaml parses");
    assert_eq!(a, again);
    let dhcp = GOOD
        .replace(
            "  address: 192.168.77.11/24\n  gateway: 192.168.77.1\n",
            "  dhcp: true\n",
        )
        .replace("lan_address: 192.168.77.12/24", "lan_address: dhcp")
        + "witness: 192.168.77.1\n";
    let d = parse(&dhcp, "dhcp.yaml").expect("dhcp answers");
    assert_eq!(d.peer.lan_address, PeerLan::Dhcp);
    assert_eq!(parse(&d.to_yaml(), "x").unwrap(), d);
}

#[test]
fn shape_errors_name_their_line() {
    assert_eq!(
        errors(&GOOD.replace("node: a", "node: c")),
        ["answers.yaml:3: node: unknown variant `c`, expected `a` or `b`"]
    );
    let e = errors(&GOOD.replace(
        "  gateway: 192.168.77.1",
        "  gateway: 192.168.77.1\n  colour: red",
    ));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("answers.yaml:11: lan: unknown field `colour`"),
        "{e:?}"
    );
    let e = errors(&GOOD.replace("10.99.0.1/24", "10.99.0.1"));
    assert!(e[0].starts_with("answers.yaml:6: "), "{e:?}");
    assert!(e[0].contains("prefix length"), "{e:?}");
    let e = errors(&GOOD.replace("  link_address: 10.99.0.2/24\n", ""));
    assert!(
        e[0].starts_with("answers.yaml:11: peer: missing field `link_address`"),
        "{e:?}"
    );
    assert_eq!(errors(""), ["answers.yaml:1: the file is empty"]);
}

#[test]
fn every_problem_of_the_whole_is_reported_at_its_line() {
    let bad = GOOD
        .replace("disk: /dev/vda", "disk: vda")
        .replace("gateway: 192.168.77.1", "gateway: 10.0.0.1")
        .replace("link_address: 10.99.0.2/24", "link_address: 10.98.0.2/24")
        .replace(
            "lan_address: 192.168.77.12/24",
            "lan_address: 192.168.77.11/24",
        );
    assert_eq!(
        errors(&bad),
        [
            "answers.yaml:2: `vda` is not a disk like /dev/sda",
            "answers.yaml:12: the peer's link address 10.98.0.2/24 is not in this node's link subnet 10.99.0.0/24",
            "answers.yaml:10: the gateway 10.0.0.1 is not in the LAN subnet 192.168.77.0/24",
            "answers.yaml:13: the peer's LAN address 192.168.77.11/24 is this node's own",
        ]
    );
}

#[test]
fn dhcp_needs_a_witness_and_no_gateway() {
    let dhcp = GOOD.replace("  address: 192.168.77.11/24\n", "  dhcp: true\n");
    assert_eq!(
        errors(&dhcp),
        ["answers.yaml:10: a gateway goes with a static address; DHCP gives its own"]
    );
    let no_gw = dhcp.replace("  gateway: 192.168.77.1\n", "");
    let e = errors(&no_gw);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("answers.yaml:1: without a LAN gateway the witness"),
        "{e:?}"
    );
    let both = GOOD.replace("  interface: eth0\n", "  interface: eth0\n  dhcp: true\n");
    assert_eq!(
        errors(&both),
        ["answers.yaml:10: give either `dhcp: true` or an `address`, not both"]
    );
}

#[test]
fn the_link_and_the_lan_are_two_nics() {
    let e = errors(&GOOD.replace("interface: eth1", "interface: eth0"));
    assert_eq!(
        e,
        ["answers.yaml:8: the LAN and the link cannot both be eth0: the link is its own cable"]
    );
    let e = errors(&GOOD.replace("interface: eth1", "interface: \"eth 1\""));
    assert_eq!(
        e,
        ["answers.yaml:5: `eth 1` is not a network interface name like eth0"]
    );
}
