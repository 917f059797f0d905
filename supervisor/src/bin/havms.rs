//! havms, the HAVmS command line and console menu (see `havms_supervisor::cli`).

use clap::Parser;

fn main() {
    havms_supervisor::logging::init("havms", "warn");
    let args = havms_supervisor::cli::Args::parse();
    match havms_supervisor::cli::run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("havms: {e:#}");
            std::process::exit(1);
        }
    }
}
