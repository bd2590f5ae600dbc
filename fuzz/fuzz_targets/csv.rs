//! The CSV reader: lines through `produce --csv`'s record builder, with a key and a
//! timestamp column.
#![no_main]
use kappa::record::ingest::{Format, Ingest, Item};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut ing) = Ingest::new(Format::Csv, Some("id"), Some("ts"), None, 4096, "limit") else {
        return;
    };
    for (no, line) in data.split(|b| *b == b'\n').enumerate() {
        if let Item::Record(p) = ing.line(no as u64 + 1, line, false) {
            std::hint::black_box(p.as_ref(0).encoded_len());
        }
    }
    std::hint::black_box(ing.finish().is_some());
});
