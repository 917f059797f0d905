//! libFuzzer entry of the `wire_frame` target; the harness is `havms_fuzz::wire::wire_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| havms_fuzz::wire::wire_frame(data));
