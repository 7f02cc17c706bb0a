//! Fuzz target `cel_route`: see `skiff_dataplane::fuzzing::cel_route`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_dataplane::fuzzing::cel_route(data));
