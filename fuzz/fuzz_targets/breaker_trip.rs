//! Fuzz target `breaker_trip`: see `skiff_dataplane::fuzzing::breaker_trip`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_dataplane::fuzzing::breaker_trip(data));
