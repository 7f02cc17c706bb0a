//! Fuzz target `acl`: see `skiff_dataplane::fuzzing::acl`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_dataplane::fuzzing::acl(data));
