//! Docker API request parsing: path routing, version prefix, query options, JSON bodies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    backends::fuzz_support::docker_request(data);
});
