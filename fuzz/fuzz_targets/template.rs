//! The `consume --format` template parser, and rendering a record with what it parsed.
#![no_main]
use kappa::log::format::Record;
use kappa::record::template::Template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = Template::parse(s) {
        let rec = Record::from_parts(
            7,
            1_700_000_000_000,
            Some(b"k"),
            br#"{"a":{"b":[1,2]},"s":"x"}"#,
            true,
            &[],
            0,
        );
        let mut out = Vec::new();
        t.render(&mut out, "topic", 3, &rec);
        std::hint::black_box(out);
    }
});
