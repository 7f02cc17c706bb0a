//! Fuzz target `grpc_request`: see `skiff_dataplane::fuzzing::grpc_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| skiff_dataplane::fuzzing::grpc_request(data));
