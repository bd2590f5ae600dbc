//! The frame decoder: any bytes where a frame is expected. Half the inputs get a correct
//! length and CRC written in first, so the fuzzer reaches what lies behind the CRC (record,
//! header, offset table and source mark parsing) instead of stopping at the checksum.
#![no_main]
use kappa::log::format::{check_frame, source_mark, FrameCheck, RecordIter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut frame = rest.to_vec();
    if mode & 1 == 1 && frame.len() >= 8 {
        let len = (frame.len() - 8) as u32;
        frame[0..4].copy_from_slice(&len.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&frame[0..4]);
        h.update(&frame[8..]);
        let crc = h.finalize();
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
    }
    if let FrameCheck::Ok(info) = check_frame(&frame) {
        let frame = &frame[..info.total_len];
        let mut last = None;
        for r in RecordIter::new(frame, &info) {
            // Offsets ascend and stay inside the frame's range.
            assert!(last < Some(r.offset));
            assert!(r.offset >= info.base_offset && r.offset < info.next_offset());
            last = Some(r.offset);
            for (n, v) in r.headers() {
                std::hint::black_box((n, v));
            }
            std::hint::black_box((r.key, r.value, r.timestamp));
        }
        assert_eq!(
            RecordIter::new(frame, &info).count(),
            info.record_count as usize
        );
        std::hint::black_box(source_mark(frame, &info));
    }
});
