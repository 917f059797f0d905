//! libFuzzer entry of the `control_line` target; the harness is `havms_fuzz::control::control_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| havms_fuzz::control::control_line(data));
