//! Fuzz target `cloudevent`: see `skiff_dataplane::fuzzing::cloudevent`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_dataplane::fuzzing::cloudevent(data));
