//! libFuzzer entry of the `api_request` target; the harness is `havms_fuzz::api::api_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| havms_fuzz::api::api_request(data));
