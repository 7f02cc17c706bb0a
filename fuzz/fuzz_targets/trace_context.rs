//! Fuzz target `trace_context`: see `skiff_dataplane::fuzzing::trace_context`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_dataplane::fuzzing::trace_context(data));
