//! havmsd, the HAVmS supervisor daemon (see `havms_supervisor::daemon`).

use clap::Parser;

fn main() {
    havms_supervisor::logging::init("havmsd", "info");
    let args = havms_supervisor::daemon::Args::parse();
    if let Err(e) = havms_supervisor::daemon::run(args) {
        log::error!("{e:#}");
        std::process::exit(1);
    }
}
