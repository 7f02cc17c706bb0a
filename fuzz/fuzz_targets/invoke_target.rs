//! Fuzz target `invoke_target`: see `skiff_dataplane::fuzzing::invoke_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_dataplane::fuzzing::invoke_target(data));
