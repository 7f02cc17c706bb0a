//! Fuzz target `state_request`: see `skiff_dataplane::fuzzing::state_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_dataplane::fuzzing::state_request(data));
