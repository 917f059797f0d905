//! The fuzz harnesses of HAVmS: one function per input the outside can reach, each checking
//! what must hold for any bytes (no panic, re-encoding gives the same bytes, errors that point
//! inside the input, the replica equal to a model of what was committed). The libFuzzer entry
//! points in `fuzz_targets/` are one line each and call these; `seeds` makes the starting
//! corpus (fuzz/seeds/TARGET) with the project's own encoders, and the unit tests here run the
//! harnesses over those seeds without libFuzzer, and over every input a run ever found a defect
//! with (fuzz/regressions/TARGET/, one file per finding, named for what it showed).

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

    /// Every input a fuzz run found a defect with still passes its harness.
    #[test]
    fn regressions_pass_their_harness() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
        let mut found = 0;
        for entry in std::fs::read_dir(&root).expect("fuzz/regressions") {
            let dir = entry.expect("a regressions folder").path();
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let harness = super::TARGETS
                .iter()
                .find(|(t, _)| *t == name)
                .unwrap_or_else(|| panic!("fuzz/regressions/{name}: no such target"))
                .1;
            for file in std::fs::read_dir(&dir).expect("a regressions folder") {
                let path = file.expect("a regression").path();
                eprintln!("{}", path.display());
                harness(&std::fs::read(&path).expect("a regression input"));
                found += 1;
            }
        }
        assert!(found > 0, "no regressions in {}", root.display());
    }
}
