//! libFuzzer entry of the `config` target; the harness is `havms_fuzz::config::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| havms_fuzz::config::config(data));
