//! The index loaders, and the lookups readers and recovery do with what they load.
#![no_main]
use kappa::log::index::{floor_offset, floor_time, offsets_plausible, parse_offsets, parse_times};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = data.first().copied().unwrap_or(0) as u64;
    if let Ok(e) = parse_offsets(data, base) {
        std::hint::black_box(offsets_plausible(&e, base, data.len() as u64));
        for probe in [0, base, u64::MAX, data.len() as u64] {
            std::hint::black_box(floor_offset(&e, probe));
        }
    }
    if let Ok(t) = parse_times(data, base) {
        for probe in [i64::MIN, 0, i64::MAX] {
            std::hint::black_box(floor_time(&t, probe));
        }
    }
});
