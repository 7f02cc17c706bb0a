//! Fuzz target `yaml_documents`: see `skiff_dataplane::fuzzing::yaml_documents`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_dataplane::fuzzing::yaml_documents(data));
