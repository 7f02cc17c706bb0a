//! Fuzz target `csr`: see `skiff_dataplane::fuzzing::csr`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_dataplane::fuzzing::csr(data));
