//! `havms-ledger --log PATH [--port N] [--listen ADDR]`: the ledger server of the nested test
//! guest (`guest=ledger` in qemu-tests/src/engine/guest-init.sh, which passes the kernel
//! argument `ledger_port=`). Prints `LEDGER-READY port=N entries=N boot_id=ID` once it listens,
//! `LEDGER-FAILED reason` and exits 1 when it cannot start or stops accepting.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use havms_ledger::Ledger;

/// The port when neither `--port` nor the kernel command line names one.
const DEFAULT_PORT: u16 = 7000;

#[derive(Debug)]
struct Args {
    log: PathBuf,
    listen: SocketAddr,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut log = None;
    let mut ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut port = DEFAULT_PORT;
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--log" => log = Some(PathBuf::from(value("--log")?)),
            "--port" => {
                let v = value("--port")?;
                port = v
                    .parse()
                    .map_err(|_| format!("--port {v:?} is not a port"))?;
            }
            "--listen" => {
                let v = value("--listen")?;
                ip = v
                    .parse()
                    .map_err(|_| format!("--listen {v:?} is not an IP address"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let log = log.ok_or("--log PATH is required")?;
    Ok(Args {
        log,
        listen: SocketAddr::new(ip, port),
    })
}

fn run() -> Result<(), String> {
    let args = parse(std::env::args().skip(1))
        .map_err(|e| format!("{e} (usage: havms-ledger --log PATH [--port N] [--listen ADDR])"))?;
    let ledger = Ledger::open(&args.log).map_err(|e| e.to_string())?;
    let listener =
        TcpListener::bind(args.listen).map_err(|e| format!("listening on {}: {e}", args.listen))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("reading the listening address: {e}"))?
        .port();
    println!(
        "LEDGER-READY port={port} entries={} boot_id={}",
        ledger.len(),
        havms_ledger::boot_id()
    );
    let e = havms_ledger::serve(listener, Arc::new(ledger));
    Err(format!("accepting connections: {e}"))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("LEDGER-FAILED {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments() {
        let a = args(&["--log", "/mnt/l", "--port", "7001"]).unwrap();
        assert_eq!(a.log, PathBuf::from("/mnt/l"));
        assert_eq!(a.listen, "0.0.0.0:7001".parse().unwrap());
        let a = args(&["--listen", "127.0.0.1", "--log", "x"]).unwrap();
        assert_eq!(a.listen, "127.0.0.1:7000".parse().unwrap());
        assert!(args(&[]).unwrap_err().contains("--log"));
        assert!(args(&["--log"]).unwrap_err().contains("needs a value"));
        assert!(args(&["--log", "x", "--port", "99999"]).is_err());
        assert!(args(&["--log", "x", "--bogus"])
            .unwrap_err()
            .contains("--bogus"));
    }
}
