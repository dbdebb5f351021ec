//! The control payload decoders: OPEN, ACCEPT, CLOSE_ERR.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    libchan::fuzz_support::control(data);
});
