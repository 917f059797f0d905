//! libFuzzer entry of the `increment` target; the harness is `havms_fuzz::state::increment`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| havms_fuzz::state::increment(data));
