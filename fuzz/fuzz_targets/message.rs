//! A MSG payload with references, decoded as `libchan::Value` and as the libswarm `Message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    backends::fuzz_support::message(data);
});
