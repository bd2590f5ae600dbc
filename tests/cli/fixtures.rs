//! The committed format-v1 fixtures (scripts/make-fixtures.sh wrote them once): they must
//! read back identically forever, and the corrupt one must be caught.

use crate::common::*;
use std::path::PathBuf;

fn fixture(name: &str) -> Env {
    let e = Env::new();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .join("log");
    copy_dir(&src, &e.log());
    e
}

fn expected(name: &str, file: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
            .join(file),
    )
    .unwrap()
}

#[test]
fn v1_log_reads_back_identically() {
    let e = fixture("v1");
    assert_eq!(
        e.consume("telemetry", &[]),
        expected("v1", "expected.ndjson")
    );
    assert_eq!(e.consume("raw", &[]), expected("v1", "expected-raw.ndjson"));
    // Values are the input lines, byte for byte, in key order per partition.
    let input = expected("v1", "input.ndjson");
    let mut got: Vec<String> = e
        .consume("telemetry", &["--value"])
        .lines()
        .map(String::from)
        .collect();
    let mut want: Vec<String> = input.lines().map(String::from).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    let v = e.run("logd", &["verify"], b"");
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    let g = lines(&e.ok("logd", &["groups", "describe", "fixture", "--json"], b""));
    assert_eq!(
        g.iter()
            .map(|v| v["committed"].as_u64().unwrap())
            .sum::<u64>(),
        7
    );
    let seeks = e.consume(
        "telemetry",
        &["--from", "@1795000030000", "--partition", "1", "--max", "1"],
    );
    let want_first = lines(&expected("v1", "expected.ndjson"))
        .into_iter()
        .find(|v| v["partition"] == 1 && v["ts"].as_i64().unwrap() >= 1_795_000_030_000)
        .unwrap();
    assert_eq!(lines(&seeks)[0], want_first);
}

#[test]
fn v1_corrupt_log_is_caught() {
    let e = fixture("v1-corrupt");
    let v = e.run("logd", &["verify"], b"");
    assert_eq!(v.status.code(), Some(1));
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(
        out.contains(
            "telemetry/0/00000000000000000000.log: position 32 (offset 0): frame CRC mismatch"
        ),
        "{out}"
    );
    let c = e.run("consume", &["-t", "telemetry", "--partition", "0"], b"");
    assert_eq!(c.status.code(), Some(1));
    assert!(c.stdout.is_empty());
    // The undamaged partition still reads.
    let p1 = e.consume("telemetry", &["--partition", "1"]);
    let want: String = expected("v1", "expected.ndjson")
        .lines()
        .filter(|l| l.contains("\"partition\":1"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(p1, want);
}

#[test]
fn table_v1_reads_back_identically() {
    let e = fixture("table-v1");
    assert_eq!(
        e.ok("store", &["export", "fleet"], b""),
        expected("table-v1", "expected.ndjson")
    );
    assert_eq!(
        e.ok("store", &["export", "fleet@v2"], b""),
        expected("table-v1", "expected-v2.ndjson")
    );
    assert_eq!(
        e.ok("store", &["stats", "fleet"], b""),
        expected("table-v1", "expected-stats.json")
    );
    assert_eq!(
        e.ok("store", &["get", "fleet", "dev-3", "--value"], b""),
        "{\"n\":3,\"temp\":23.25}\n"
    );
    let v = e.run("logd", &["verify"], b"");
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // A writer opens the old table, skips what it applied, and goes on.
    let more = "{\"topic\":\"tel\",\"partition\":1,\"offset\":6,\"key\":\"dev-0\",\"value\":{\"n\":-1}}\n\
                {\"topic\":\"tel\",\"partition\":1,\"offset\":7,\"key\":\"dev-9\",\"value\":{\"n\":7}}\n";
    let o = e.run("store", &["--table", "fleet"], more.as_bytes());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("1 upserts, 0 deletes, 1 already applied"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let rows = lines(&e.ok("store", &["export", "fleet"], b""));
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0]["n"], 6);
}

#[test]
fn table_v1_corrupt_is_caught() {
    let e = fixture("table-v1-corrupt");
    let s = e.run("store", &["stats", "fleet"], b"");
    assert_eq!(s.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&s.stderr);
    assert!(
        msg.contains("00000000000000000000.log: position 32 (offset 0)") && msg.contains("CRC"),
        "{msg}"
    );
    let x = e.run("store", &["export", "fleet"], b"");
    assert_eq!(x.status.code(), Some(1));
    assert!(x.stdout.is_empty(), "damaged data is never served");
    let v = e.run("logd", &["verify"], b"");
    assert_eq!(v.status.code(), Some(1));
    // The other version is intact and still reads.
    assert_eq!(
        e.ok("store", &["export", "fleet@v2"], b""),
        expected("table-v1", "expected-v2.ndjson")
    );
}

#[test]
fn v1_corrupt_is_repaired() {
    let e = fixture("v1-corrupt");
    let r = e.ok("logd", &["repair", "--salvage"], b"");
    assert!(
        r.contains("telemetry/0: ")
            && r.contains("damage at position 32 (offset 0): frame CRC mismatch")
            && r.contains("records lost"),
        "{r}"
    );
    assert_eq!(e.run("logd", &["verify"], b"").status.code(), Some(0));
    // Partition 0 serves only records that were written, in their order.
    let want: Vec<String> = expected("v1", "expected.ndjson")
        .lines()
        .filter(|l| l.contains("\"partition\":0"))
        .map(|l| lines(l)[0]["value"].to_string())
        .collect();
    let got = e.consume("telemetry", &["--partition", "0"]);
    let mut rest = want.iter();
    for l in lines(&got) {
        let v = l["value"].to_string();
        assert!(
            rest.any(|w| *w == v),
            "{v} was not written, or out of order"
        );
    }
}
