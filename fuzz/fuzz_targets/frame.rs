//! The frame decoder: any bytes where a frame is expected.
#![no_main]
use kappa::log::format::{check_frame, source_mark, FrameCheck, RecordIter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let FrameCheck::Ok(info) = check_frame(data) {
        let frame = &data[..info.total_len];
        for r in RecordIter::new(frame, &info) {
            for (n, v) in r.headers() {
                std::hint::black_box((n, v));
            }
            std::hint::black_box((r.key, r.value, r.timestamp));
        }
        std::hint::black_box(source_mark(frame, &info));
    }
});
