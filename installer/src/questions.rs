//! The interactive questions on the console, in the manner of Alpine's setup-alpine: one
//! question at a time, each with a default in brackets (Enter takes it), a wrong answer said
//! plainly and asked again, then a summary and `Erase DISK (SIZE, MODEL) and install? [y/N]`.
//! A "no" writes nothing and asks again with the answers given as the new defaults.
//!
//! The flow runs over any `BufRead` + `Write`, so the unit tests drive it with scripted input.

use std::io::{BufRead, Write};
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use havms_config::Cidr;

use crate::answers::{
    check_gateway, check_interface, check_peer_lan, check_peer_link, After, Answers, Lan, Link,
    NodeId, Peer, PeerLan, DEFAULT_CLUSTER,
};
use crate::disks::{human_bytes, Disk};

/// A network interface the installer can offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    /// Cable plugged in, when the driver says.
    pub carrier: Option<bool>,
}

/// What the machine has: the disks that may be erased and the NICs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
}

/// The console the questions are asked on.
pub struct Console<R, W> {
    input: R,
    out: W,
}

impl<R: BufRead, W: Write> Console<R, W> {
    pub fn new(input: R, out: W) -> Self {
        Self { input, out }
    }

    pub fn say(&mut self, text: &str) -> Result<()> {
        writeln!(self.out, "{text}").context("writing to the console")
    }

    fn read_line(&mut self) -> Result<String> {
        self.out.flush().context("writing to the console")?;
        let mut line = String::new();
        let n = self
            .input
            .read_line(&mut line)
            .context("reading the console")?;
        if n == 0 {
            bail!("the console closed before the questions were answered; nothing was written");
        }
        Ok(line.trim().to_string())
    }

    /// Asks until `parse` accepts the answer (Enter: `default`).
    pub fn ask<T>(
        &mut self,
        question: &str,
        default: Option<&str>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T> {
        loop {
            match default {
                Some(d) => write!(self.out, "{question} [{d}]: "),
                None => write!(self.out, "{question}: "),
            }
            .context("writing to the console")?;
            let line = self.read_line()?;
            let answer = match (line.is_empty(), default) {
                (true, Some(d)) => d.to_string(),
                (true, None) => {
                    self.say("  An answer is needed.")?;
                    continue;
                }
                (false, _) => line,
            };
            match parse(&answer) {
                Ok(v) => return Ok(v),
                Err(reason) => self.say(&format!("  {reason}. Please answer again."))?,
            }
        }
    }

    /// Says `text` and waits for Enter (or the end of input).
    pub fn pause(&mut self, text: &str) -> Result<()> {
        write!(self.out, "{text} ").context("writing to the console")?;
        self.read_line().map(|_| ())
    }

    /// `[y/N]`: only y or yes says yes; Enter is no.
    pub fn confirm(&mut self, question: &str) -> Result<bool> {
        loop {
            write!(self.out, "{question} [y/N]: ").context("writing to the console")?;
            match self.read_line()?.to_ascii_lowercase().as_str() {
                "y" | "yes" => return Ok(true),
                "" | "n" | "no" => return Ok(false),
                other => self.say(&format!("  `{other}` is neither y nor n."))?,
            }
        }
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse::<Cidr>()
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not an IPv4 address like 192.168.1.1"))
}

/// The n-th host of `c`'s subnet (1 = .1 in a /24), as the default for an address question.
fn host(c: &Cidr, n: u32) -> Cidr {
    Cidr {
        // Saturating: a /32 at the top of the space makes a silly default, never a panic.
        addr: Ipv4Addr::from(u32::from(c.network()).saturating_add(n)),
        prefix_len: c.prefix_len,
    }
}

fn nic_choice(nics: &[Nic], taken: Option<&str>) -> impl Fn(&str) -> Result<String, String> {
    let names: Vec<String> = nics.iter().map(|n| n.name.clone()).collect();
    let taken = taken.map(str::to_string);
    move |s: &str| {
        if !names.iter().any(|n| n == s) {
            return Err(format!(
                "there is no NIC `{s}`; the NICs are {}",
                names.join(", ")
            ));
        }
        if taken.as_deref() == Some(s) {
            return Err(format!(
                "{s} is the link already; the LAN needs the other NIC"
            ));
        }
        check_interface(s).map(|()| s.to_string())
    }
}

fn disk_choice(disks: &[Disk]) -> impl Fn(&str) -> Result<String, String> + '_ {
    move |s: &str| {
        let name = s.trim_start_matches("/dev/");
        let by_number = s
            .parse::<usize>()
            .ok()
            .and_then(|n| disks.get(n.checked_sub(1)?));
        by_number
            .or_else(|| disks.iter().find(|d| d.name == name))
            .map(|d| d.path.display().to_string())
            .ok_or_else(|| {
                let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
                format!(
                    "`{s}` is not one of the disks listed ({})",
                    names.join(", ")
                )
            })
    }
}

/// Asks every question once; `prev` (answers refused at the confirmation) gives the defaults.
pub fn ask<R: BufRead, W: Write>(
    con: &mut Console<R, W>,
    machine: &Machine,
    prev: Option<&Answers>,
) -> Result<Answers> {
    if machine.disks.is_empty() {
        bail!("no disk to install on was found (the boot medium is never offered)");
    }
    if machine.nics.len() < 2 {
        bail!(
            "HAVmS needs two NICs (the link and the LAN); this PC has {}",
            machine.nics.len()
        );
    }
    con.say("Disks (everything on the one chosen is erased):")?;
    for (i, d) in machine.disks.iter().enumerate() {
        con.say(&format!(
            "  {}) {:<10} {:>8}  {}",
            i + 1,
            d.name,
            human_bytes(d.bytes),
            d.model
        ))?;
    }
    let default_disk = prev.map_or(machine.disks[0].name.clone(), |p| {
        p.disk.trim_start_matches("/dev/").to_string()
    });
    let disk = con.ask(
        "Disk to install on",
        Some(&default_disk),
        disk_choice(&machine.disks),
    )?;

    let node = con.ask(
        "Which node is this PC, a or b",
        Some(prev.map_or("a", |p| p.node.name())),
        |s| match s.to_ascii_lowercase().as_str() {
            "a" => Ok(NodeId::A),
            "b" => Ok(NodeId::B),
            _ => Err(format!("`{s}` is neither a nor b")),
        },
    )?;
    let own_host = match node {
        NodeId::A => 1,
        NodeId::B => 2,
    };

    con.say("Network interfaces:")?;
    for n in &machine.nics {
        let cable = match n.carrier {
            Some(true) => "cable in",
            Some(false) => "no cable",
            None => "",
        };
        con.say(&format!("  {:<10} {}  {cable}", n.name, n.mac))?;
    }
    let default_link = prev.map_or(machine.nics[1].name.clone(), |p| p.link.interface.clone());
    let link_if = con.ask(
        "NIC of the link (the direct cable to the other PC)",
        Some(&default_link),
        nic_choice(&machine.nics, None),
    )?;
    let default_link_addr = prev.map_or_else(
        || format!("10.99.0.{own_host}/24"),
        |p| p.link.address.to_string(),
    );
    let link_addr = con.ask(
        "Link address of this node",
        Some(&default_link_addr),
        parse_cidr,
    )?;

    let default_lan = prev.map(|p| p.lan.interface.clone()).unwrap_or_else(|| {
        machine
            .nics
            .iter()
            .find(|n| n.name != link_if)
            .map_or(String::new(), |n| n.name.clone())
    });
    let lan_if = con.ask(
        "NIC of the LAN",
        Some(&default_lan),
        nic_choice(&machine.nics, Some(&link_if)),
    )?;
    let default_lan_addr = prev.map_or("dhcp".to_string(), |p| match p.lan.address {
        Some(a) if !p.lan.dhcp => a.to_string(),
        _ => "dhcp".to_string(),
    });
    let lan_addr: Option<Cidr> = con.ask(
        "LAN address of this node: dhcp, or an address like 192.168.1.11/24",
        Some(&default_lan_addr),
        |s| {
            if s.eq_ignore_ascii_case("dhcp") {
                Ok(None)
            } else {
                parse_cidr(s).map(Some)
            }
        },
    )?;
    let gateway = match lan_addr {
        None => None,
        Some(addr) => {
            let default_gw = prev
                .and_then(|p| p.lan.gateway)
                .filter(|g| addr.contains(*g))
                .unwrap_or(host(&addr, 1).addr)
                .to_string();
            Some(con.ask("LAN gateway", Some(&default_gw), |s| {
                let g = parse_ip(s)?;
                check_gateway(&addr, g).map(|()| g)
            })?)
        }
    };

    let peer_host = 3 - own_host;
    let default_peer_link = prev
        .map(|p| p.peer.link_address)
        .filter(|c| check_peer_link(&link_addr, c).is_ok())
        .unwrap_or_else(|| host(&link_addr, peer_host))
        .to_string();
    let peer_link = con.ask(
        "Link address of the other node",
        Some(&default_peer_link),
        |s| {
            let c = parse_cidr(s)?;
            check_peer_link(&link_addr, &c).map(|()| c)
        },
    )?;
    let default_peer_lan = match (prev.map(|p| p.peer.lan_address), lan_addr) {
        (Some(PeerLan::Static(c)), Some(ours)) if check_peer_lan(&ours, &c).is_ok() => {
            c.to_string()
        }
        (_, None) => "dhcp".to_string(),
        // The other node's address next to ours: .11 and .12.
        (_, Some(ours)) => {
            let n = u32::from(ours.addr);
            let other = if node == NodeId::A {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
            Cidr {
                addr: Ipv4Addr::from(other),
                prefix_len: ours.prefix_len,
            }
            .to_string()
        }
    };
    let peer_lan = con.ask(
        "LAN address of the other node: dhcp, or its address",
        Some(&default_peer_lan),
        |s| {
            let p: PeerLan = s.parse()?;
            if let (PeerLan::Static(c), Some(ours)) = (p, lan_addr) {
                check_peer_lan(&ours, &c)?;
            }
            Ok(p)
        },
    )?;
    let default_witness = prev
        .and_then(|p| p.witness)
        .or(gateway)
        .map(|w| w.to_string());
    let witness = con.ask(
        "Witness (an address only a node that is not cut off can reach)",
        default_witness.as_deref(),
        parse_ip,
    )?;
    Ok(Answers {
        disk,
        node,
        cluster: prev.map_or(DEFAULT_CLUSTER.to_string(), |p| p.cluster.clone()),
        link: Link {
            interface: link_if,
            address: link_addr,
        },
        lan: Lan {
            interface: lan_if,
            dhcp: lan_addr.is_none(),
            address: lan_addr,
            gateway,
        },
        peer: Peer {
            link_address: peer_link,
            lan_address: peer_lan,
            link_interface: None,
            lan_interface: None,
        },
        // The gateway is the witness by default: the file needs no line for it then.
        witness: Some(witness).filter(|w| Some(*w) != gateway),
        after: prev.map_or(After::Reboot, |p| p.after),
        // The confirmation below is the say-so here; an answer file made from these answers
        // (install-answers.yaml) must say it itself.
        reinstall: false,
    })
}

/// The summary shown before the confirmation.
pub fn summary(a: &Answers, disk: &Disk) -> String {
    let lan = match (a.lan.address, a.lan.gateway) {
        (Some(addr), Some(gw)) => format!("{addr}, gateway {gw}"),
        (Some(addr), None) => addr.to_string(),
        _ => "dhcp".to_string(),
    };
    let witness = a
        .witness
        .or(a.gateway())
        .map_or("-".into(), |w| w.to_string());
    format!(
        "Summary:\n  disk     {}\n  node     {}\n  link     {} {}\n  lan      {} {lan}\n  peer     link {}, lan {}\n  witness  {witness}",
        disk.describe(),
        a.node.name(),
        a.link.interface,
        a.link.address,
        a.lan.interface,
        a.peer.link_address,
        a.peer.lan_address,
    )
}

/// Questions, summary, confirmation; again until the answer is yes. Nothing is written here.
pub fn interactive<R: BufRead, W: Write>(
    con: &mut Console<R, W>,
    machine: &Machine,
) -> Result<Answers> {
    let mut prev: Option<Answers> = None;
    loop {
        let a = ask(con, machine, prev.as_ref())?;
        let problems = a.problems();
        let Some(disk) = machine
            .disks
            .iter()
            .find(|d| d.path.display().to_string() == a.disk)
        else {
            bail!("the chosen disk {} is gone", a.disk);
        };
        con.say(&summary(&a, disk))?;
        if !problems.is_empty() {
            for (_, _, reason) in problems {
                con.say(&format!("  {reason}"))?;
            }
            con.say("These answers cannot be installed; the questions again.")?;
        } else if con.confirm(&format!("Erase {} and install?", disk.describe()))? {
            return Ok(a);
        } else {
            con.say(&format!(
                "Nothing was written to {}. The questions again (Enter keeps each answer).",
                a.disk
            ))?;
        }
        prev = Some(a);
    }
}

#[cfg(test)]
#[path = "questions_tests.rs"]
mod tests;
