//! Fuzz target `http1_request`: see `skiff_dataplane::fuzzing::http1_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_dataplane::fuzzing::http1_request(data));
