//! `havms vm list | start NAME | stop NAME | console NAME`: the VMs of the config, asking
//! havmsd (which knows where each runs and keeps both nodes agreeing), and a VM's serial
//! console when it runs on this node.

use crate::client::{Client, ClientError};
use crate::gather::Sources;
use crate::protocol::{Request, Response};
use crate::vms::status::VmStatus;
use anyhow::{bail, Context, Result};
use std::path::Path;

use super::status::TIMEOUT;

fn ask(src: &Sources, req: &Request) -> Result<Response> {
    let mut c = Client::connect(&src.socket, TIMEOUT).map_err(|e| match e {
        ClientError::Connect(e) => {
            anyhow::anyhow!("havmsd is not running ({}: {e})", src.socket.display())
        }
        other => anyhow::anyhow!(other),
    })?;
    match c.request(req) {
        Ok(r) => Ok(r),
        Err(ClientError::Daemon(e)) => bail!("{e}"),
        Err(e) => Err(e.into()),
    }
}

fn list(src: &Sources) -> Result<Vec<VmStatus>> {
    match ask(src, &Request::VmList)? {
        Response::Vms(v) => Ok(v),
        other => bail!("havmsd answered {other:?} to vm_list"),
    }
}

/// `havms vm list [--json]`.
pub fn run_list(src: &Sources, json: bool) -> Result<i32> {
    let vms = list(src)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&vms)?);
        return Ok(0);
    }
    if vms.is_empty() {
        println!("no VMs in the config");
    }
    for v in &vms {
        println!("{}", v.line());
        for n in v.notes() {
            println!("    {n}");
        }
    }
    Ok(0)
}

/// `havms vm start [--force]|stop NAME`.
pub fn run_intent(src: &Sources, name: &str, start: bool, force: bool) -> Result<i32> {
    let req = if start {
        Request::VmStart {
            name: name.into(),
            force,
        }
    } else {
        Request::VmStop { name: name.into() }
    };
    match ask(src, &req)? {
        Response::Done { message } => {
            println!("{message}");
            Ok(0)
        }
        other => bail!("havmsd answered {other:?}"),
    }
}

/// A request answered with a message (`havms switchover`, `havms maintenance`): printed; a
/// refusal is an error naming the reason.
pub fn run_request(src: &Sources, req: &Request) -> Result<i32> {
    match ask(src, req)? {
        Response::Done { message } => {
            println!("{message}");
            Ok(0)
        }
        other => bail!("havmsd answered {other:?}"),
    }
}

/// The console socket of `name` on this node, or why there is none to attach to.
pub fn console_socket(src: &Sources, vms_dir: &Path, name: &str) -> Result<std::path::PathBuf> {
    let vms = list(src)?;
    let Some(v) = vms.iter().find(|v| v.name == name) else {
        let known: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        bail!(
            "no VM {name} in the config (VMs: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        );
    };
    if v.role != "primary" {
        match &v.runs_on {
            Some(node) => bail!("vm {name} runs on node {node}: attach to its console there"),
            None => bail!("vm {name} does not run (state {})", v.state),
        }
    }
    let sock = vms_dir.join(name).join("console.sock");
    if !sock.exists() {
        bail!("vm {name}: no console socket at {}", sock.display());
    }
    Ok(sock)
}

/// `havms vm console NAME`: attach (raw terminal, Ctrl-] detaches).
pub fn run_console(src: &Sources, vms_dir: &Path, name: &str) -> Result<i32> {
    let sock = console_socket(src, vms_dir, name).context("havms vm console")?;
    super::attach::run(&sock, &super::attach::Options::default())
}
