//! libFuzzer entry of the `snapshot` target; the harness is `havms_fuzz::state::snapshot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| havms_fuzz::state::snapshot(data));
