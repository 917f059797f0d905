//! Log setup for both binaries: `RUST_LOG` (init passes `havms.log=`), default `info`, one line per
//! record. havmsd's stderr is appended to /run/log/havms.log next to init's lines, so each line names
//! the program.

use std::io::Write;

/// Initialises env_logger; `program` prefixes every line. Safe to call once per process.
pub fn init(program: &'static str, default_level: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} {program}: {:<5} {}",
                buf.timestamp_seconds(),
                record.level(),
                record.args()
            )
        })
        .init();
}
