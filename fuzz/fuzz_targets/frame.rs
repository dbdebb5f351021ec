//! The frame decoder: whole buffers, the streaming reader in chunks, the first-frame read.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    libchan::fuzz_support::frame(data);
});
