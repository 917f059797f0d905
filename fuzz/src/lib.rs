//! The fuzz harnesses of HAVmS: one function per input the outside can reach, each checking
//! what must hold for any bytes (no panic, re-encoding gives the same bytes, errors that point
//! inside the input, the replica equal to a model of what was committed). The libFuzzer entry
//! points in `fuzz_targets/` are one line each and call these; `seeds` makes the starting
//! corpus (fuzz/seeds/TARGET) with the project's own encoders, and the unit tests here run the
//! harnesses over those seeds without libFuzzer.

pub mod answers;
pub mod api;
pub mod config;
pub mod control;
pub mod heartbeat;
pub mod script;
pub mod seeds;
pub mod state;
pub mod stream;
pub mod wire;

/// A harness: called with each input libFuzzer makes; a panic is a finding.
pub type Harness = fn(&[u8]);

/// Every target: its name (the binary in fuzz_targets/, the folder in fuzz/seeds/) and its
/// harness.
pub const TARGETS: &[(&str, Harness)] = &[
    ("wire_frame", wire::wire_frame),
    ("replica_stream", stream::replica_stream),
    ("config", config::config),
    ("api_request", api::api_request),
    ("snapshot", state::snapshot),
    ("increment", state::increment),
    ("control_line", control::control_line),
    ("heartbeat", heartbeat::heartbeat),
    ("answer_file", answers::answer_file),
];

#[cfg(test)]
mod tests {
    /// Every seed the generator makes passes its harness (what a fuzz run starts from).
    #[test]
    fn seeds_pass_their_harness() {
        for (name, harness) in super::TARGETS {
            let seeds = super::seeds::for_target(name);
            assert!(!seeds.is_empty(), "{name} has no seeds");
            for (seed, bytes) in seeds {
                eprintln!("{name}/{seed}");
                harness(&bytes);
            }
        }
    }
}
