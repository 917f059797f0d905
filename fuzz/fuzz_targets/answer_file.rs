//! libFuzzer entry of the `answer_file` target; the harness is `havms_fuzz::answers::answer_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| havms_fuzz::answers::answer_file(data));
