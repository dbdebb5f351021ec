//! The pipeline-spec parser: shell-quoted words and nested specs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    backends::fuzz_support::spec(data);
});
