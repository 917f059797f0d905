//! libFuzzer entry of the `heartbeat` target; the harness is `havms_fuzz::heartbeat::heartbeat`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| havms_fuzz::heartbeat::heartbeat(data));
