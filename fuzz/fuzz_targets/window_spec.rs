//! The `window` spec parsers: `--agg`, `--by` paths and durations.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = Vec::new();
    let _ = std::hint::black_box(kappa::window::agg::parse(s, &mut fields));
    let _ = std::hint::black_box(kappa::window::Path::parse(s));
    let _ = std::hint::black_box(kappa::record::time::parse_duration_ms(s));
});
