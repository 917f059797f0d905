use super::*;

fn machine() -> Machine {
    Machine {
        disks: vec![
            Disk {
                name: "sda".into(),
                path: "/dev/sda".into(),
                bytes: 500_107_862_016,
                model: "Samsung SSD 870".into(),
            },
            Disk {
                name: "vda".into(),
                path: "/dev/vda".into(),
                bytes: 4 << 30,
                model: "virtio disk".into(),
            },
        ],
        nics: vec![
            Nic {
                name: "eth0".into(),
                mac: "52:54:00:00:01:01".into(),
                carrier: Some(true),
            },
            Nic {
                name: "eth1".into(),
                mac: "52:54:00:00:01:02".into(),
                carrier: None,
            },
        ],
    }
}

/// Runs the whole flow on `input`; returns the result and everything printed.
fn run(input: &str) -> (Result<Answers>, String) {
    let mut out = Vec::new();
    let r = {
        let mut con = Console::new(input.as_bytes(), &mut out);
        interactive(&mut con, &machine())
    };
    (r, String::from_utf8(out).unwrap())
}

#[test]
fn enter_everywhere_takes_the_defaults_after_the_witness() {
    // disk, node, link NIC, link addr, LAN NIC, LAN addr, gateway, peer link, peer LAN,
    // (witness defaults to the gateway), confirm.
    let (r, out) = run("\n\n\n\n\n192.168.1.11/24\n\n\n\n\ny\n");
    let a = r.unwrap();
    assert_eq!(a.disk, "/dev/sda");
    assert_eq!(a.node, NodeId::A);
    assert_eq!(a.link.interface, "eth1");
    assert_eq!(a.link.address.to_string(), "10.99.0.1/24");
    assert_eq!(a.lan.interface, "eth0");
    assert_eq!(a.lan.gateway, Some("192.168.1.1".parse().unwrap()));
    assert_eq!(a.peer.link_address.to_string(), "10.99.0.2/24");
    assert_eq!(a.peer.lan_address.to_string(), "192.168.1.12/24");
    assert_eq!(a.witness, None, "the gateway is the witness");
    assert!(a.problems().is_empty());
    assert!(
        out.contains("  1) sda          500 GB  Samsung SSD 870\n"),
        "{out}"
    );
    assert!(out.contains("Disk to install on [sda]: "), "{out}");
    assert!(
        out.contains("Erase /dev/sda (500 GB, Samsung SSD 870) and install? [y/N]: "),
        "{out}"
    );
    // The answers are an answer file's: what the questions give, a file says the same way.
    assert_eq!(crate::answers::parse(&a.to_yaml(), "x").unwrap(), a);
}

#[test]
fn a_wrong_answer_is_said_plainly_and_asked_again() {
    let (r, out) = run("sdz\n2\nc\nb\neth7\n\n10.99.0.2\n\n\ndhcp\n10.99.0.2/24\n10.99.0.1/24\n\n\n192.168.1.1\ny\n");
    let a = r.unwrap();
    assert_eq!(a.disk, "/dev/vda");
    assert_eq!(a.node, NodeId::B);
    assert!(
        out.contains("  `sdz` is not one of the disks listed (sda, vda). Please answer again.\n"),
        "{out}"
    );
    assert!(
        out.contains("  `c` is neither a nor b. Please answer again.\n"),
        "{out}"
    );
    assert!(
        out.contains("  there is no NIC `eth7`; the NICs are eth0, eth1. Please answer again.\n"),
        "{out}"
    );
    assert!(
        out.contains("`10.99.0.2` is not an address with a prefix length"),
        "{out}"
    );
    assert!(
        out.contains(
            "  the peer's link address 10.99.0.2/24 is this node's own. Please answer again.\n"
        ),
        "{out}"
    );
    // DHCP: no gateway question, and the witness has no default, so Enter is refused.
    assert!(!out.contains("LAN gateway"), "{out}");
    assert!(
        out.contains("Witness (an address only a node that is not cut off can reach): "),
        "{out}"
    );
    assert!(out.contains("  An answer is needed.\n"), "{out}");
    assert!(a.lan.dhcp);
    assert_eq!(a.peer.lan_address, PeerLan::Dhcp);
    assert_eq!(a.witness, Some("192.168.1.1".parse().unwrap()));
}

#[test]
fn no_asks_again_with_the_answers_as_defaults() {
    let first = "vda\nb\n\n\n\n10.0.0.12/24\n\n\n\n\nn\n";
    // Second round: Enter keeps every answer, then yes.
    let (r, out) = run(&format!("{first}\n\n\n\n\n\n\n\n\n\ny\n"));
    let a = r.unwrap();
    assert!(
        out.contains("Nothing was written to /dev/vda. The questions again"),
        "{out}"
    );
    assert!(out.contains("Disk to install on [vda]: "), "{out}");
    assert!(out.contains("Which node is this PC, a or b [b]: "), "{out}");
    assert!(
        out.contains(
            "LAN address of this node: dhcp, or an address like 192.168.1.11/24 [10.0.0.12/24]: "
        ),
        "{out}"
    );
    assert_eq!(a.node, NodeId::B);
    assert_eq!(a.peer.lan_address.to_string(), "10.0.0.11/24");
    assert_eq!(a.peer.link_address.to_string(), "10.99.0.1/24");
    assert_eq!(out.matches("Summary:").count(), 2);
}

#[test]
fn the_link_nic_cannot_be_the_lan_and_end_of_input_writes_nothing() {
    let (r, out) = run("\n\neth0\n\neth0\n");
    assert!(
        out.contains(
            "  eth0 is the link already; the LAN needs the other NIC. Please answer again.\n"
        ),
        "{out}"
    );
    let e = r.unwrap_err().to_string();
    assert!(e.contains("nothing was written"), "{e}");
    // A confirmation that is neither y nor n is asked again.
    let (r, out) = run("\n\n\n\n\n192.168.1.11/24\n\n\n\n\nmaybe\n");
    assert!(out.contains("  `maybe` is neither y nor n.\n"), "{out}");
    assert!(r.is_err());
}

#[test]
fn one_nic_is_not_enough() {
    let mut m = machine();
    m.nics.truncate(1);
    let mut out = Vec::new();
    let mut con = Console::new(&b"\n"[..], &mut out);
    let e = ask(&mut con, &m, None).unwrap_err().to_string();
    assert!(e.contains("needs two NICs"), "{e}");
}

#[test]
fn defaults_at_the_top_of_the_address_space_do_not_overflow() {
    let top: Cidr = "255.255.255.254/32".parse().unwrap();
    assert_eq!(host(&top, 2).addr, Ipv4Addr::BROADCAST);
    assert_eq!(
        host(&"10.99.0.7/24".parse().unwrap(), 2).to_string(),
        "10.99.0.2/24"
    );
}
