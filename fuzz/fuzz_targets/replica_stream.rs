//! libFuzzer entry of the `replica_stream` target; the harness is `havms_fuzz::stream::replica_stream`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| havms_fuzz::stream::replica_stream(data));
