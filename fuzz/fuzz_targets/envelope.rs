//! The envelope reader (`produce --envelope`, and every tool reading `consume` output).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = std::hint::black_box(kappa::record::envelope::parse(data));
});
