//! Torn tails, flipped bytes, lost indexes, retention and roll.

use crate::common::*;
use std::fs::{self, OpenOptions};

/// Two produce runs, so the last frame of the segment holds the second run's records.
fn two_runs(e: &Env) -> (String, u64) {
    e.produce("t", &["--ts", "ts"], &telemetry(50, 1_000_000));
    let before = e.consume("t", &["--value"]);
    let seg = &segment_files(&e.log().join("topics/t/0"), "log")[0];
    let len = fs::metadata(seg).unwrap().len();
    e.produce("t", &["--ts", "ts"], &telemetry(3, 2_000_000));
    (before, len)
}

#[test]
fn truncating_the_last_frame_at_every_byte() {
    let base = Env::new();
    let (before, cut_from) = two_runs(&base);
    let seg0 = segment_files(&base.log().join("topics/t/0"), "log")[0].clone();
    let full = fs::metadata(&seg0).unwrap().len();
    assert!(full > cut_from);
    for cut in cut_from..full {
        let e = Env::new();
        copy_dir(&base.log(), &e.log());
        let seg = e.log().join("topics/t/0").join(seg0.file_name().unwrap());
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        // A reader sees exactly the records before the torn frame, without an error.
        assert_eq!(e.consume("t", &["--value"]), before, "cut at {cut}");
        // A writer recovers and appends after them; nothing partial is ever served.
        e.produce("t", &[], "{\"after\":true}\n");
        assert_eq!(
            e.consume("t", &["--value"]),
            format!("{before}{{\"after\":true}}\n"),
            "cut at {cut}"
        );
        let v = e.run("logd", &["verify"], b"");
        assert!(
            v.status.success(),
            "cut at {cut}: {}",
            String::from_utf8_lossy(&v.stdout)
        );
        let offs: Vec<u64> = lines(&e.consume("t", &[]))
            .iter()
            .map(|v| v["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offs, (0..51).collect::<Vec<_>>());
    }
}

#[test]
fn zero_filled_tail_is_not_a_record() {
    let e = Env::new();
    let (before, _) = two_runs(&e);
    let seg = segment_files(&e.log().join("topics/t/0"), "log")[0].clone();
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len + 8192)
        .unwrap();
    let all = e.consume("t", &["--value"]);
    assert!(all.starts_with(&before));
    assert_eq!(all.lines().count(), 53);
    e.produce("t", &[], "{\"x\":1}\n");
    assert_eq!(e.consume("t", &["--value"]).lines().count(), 54);
    assert!(e.run("logd", &["verify"], b"").status.success());
}

#[test]
fn a_flipped_byte_is_reported_and_never_served() {
    let e = Env::new();
    e.produce("t", &["--ts", "ts"], &telemetry(2000, 0));
    e.produce("t", &["--ts", "ts"], &telemetry(10, 0));
    let seg = segment_files(&e.log().join("topics/t/0"), "log")[0].clone();
    let mut bytes = fs::read(&seg).unwrap();
    // Inside the first frame's records.
    let at = 32 + 40 + 100;
    bytes[at] ^= 0x10;
    fs::write(&seg, &bytes).unwrap();
    let v = e.run("logd", &["verify"], b"");
    assert_eq!(v.status.code(), Some(1));
    let report = String::from_utf8_lossy(&v.stdout);
    assert!(
        report.contains("DAMAGE") && report.contains("position 32") && report.contains("CRC"),
        "{report}"
    );
    assert!(
        report.contains(seg.file_name().unwrap().to_str().unwrap()),
        "{report}"
    );
    let c = e.run("consume", &["-t", "t", "--value"], b"");
    assert_eq!(c.status.code(), Some(1));
    let err = String::from_utf8_lossy(&c.stderr);
    assert!(
        err.contains("position 32") && err.contains("offset 0"),
        "{err}"
    );
    assert!(c.stdout.is_empty());
    // Damage after some good frames: the good records come out, then the error.
    let e2 = Env::new();
    e2.produce("t", &["--ts", "ts"], &telemetry(2000, 0));
    let seg = segment_files(&e2.log().join("topics/t/0"), "log")[0].clone();
    let mut bytes = fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    fs::write(&seg, &bytes).unwrap();
    let c = e2.run("consume", &["-t", "t", "--value"], b"");
    assert_eq!(c.status.code(), Some(1));
    let out = String::from_utf8(c.stdout).unwrap();
    let good = out.lines().count();
    assert!(good > 0 && good < 2000);
    let all = telemetry(2000, 0);
    assert!(all.starts_with(&out));
}

#[test]
fn deleted_and_damaged_indexes_are_rebuilt() {
    let e = Env::new();
    e.ok(
        "logd",
        &["topics", "create", "t", "--segment-bytes", "8192"],
        b"",
    );
    for i in 0..5 {
        e.produce("t", &["--ts", "ts"], &telemetry(100, i * 100_000));
    }
    let dir = e.log().join("topics/t/0");
    let all = e.consume("t", &["--value"]);
    let want = e.consume("t", &["--from", "@250000", "--max", "3"]);
    for f in segment_files(&dir, "index")
        .into_iter()
        .chain(segment_files(&dir, "timeindex"))
    {
        fs::remove_file(f).unwrap();
    }
    // Readers do without indexes.
    assert_eq!(e.consume("t", &["--value"]), all);
    assert_eq!(e.consume("t", &["--from", "@250000", "--max", "3"]), want);
    // Garbage in an index: verify reports it, readers ignore it, recover rebuilds it.
    e.ok("logd", &["recover"], b"");
    let idx = segment_files(&dir, "index")[0].clone();
    let mut b = fs::read(&idx).unwrap();
    assert!(b.len() >= 32 + 16);
    b[32 + 8] ^= 0x40;
    fs::write(&idx, &b).unwrap();
    let v = e.run("logd", &["verify"], b"");
    assert_eq!(
        v.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    assert_eq!(e.consume("t", &["--value"]), all);
    e.ok("logd", &["recover"], b"");
    assert!(e.run("logd", &["verify"], b"").status.success());
    assert_eq!(e.consume("t", &["--from", "@250000", "--max", "3"]), want);
}

#[test]
fn roll_and_retention() {
    let e = Env::new();
    e.ok(
        "logd",
        &["topics", "create", "t", "--segment-bytes", "16KiB"],
        b"",
    );
    for i in 0..10 {
        e.produce("t", &["--ts", "ts"], &telemetry(200, i * 1_000_000));
    }
    let dir = e.log().join("topics/t/0");
    let n = segment_files(&dir, "log").len();
    assert!(n >= 5, "{n} segments");
    // A reader that has the oldest segment open keeps reading it while retention deletes it.
    let mut r = kappa::log::PartitionReader::open(&dir).unwrap();
    let first = r
        .next_frame()
        .unwrap()
        .unwrap()
        .records()
        .next()
        .unwrap()
        .offset;
    assert_eq!(first, 0);
    e.ok(
        "logd",
        &["topics", "alter", "t", "--retention-bytes", "40KiB"],
        b"",
    );
    let out = e.ok("logd", &["retention"], b"");
    assert!(out.contains("retention deleted segment"), "{out}");
    let left = segment_files(&dir, "log");
    assert!(left.len() < n);
    let total: u64 = left.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert!(total <= 40 * 1024 + 16 * 1024 + 4096, "{total}");
    let mut count = 0;
    while let Some(f) = r.next_frame().unwrap() {
        count += f.records().count();
        if count > 100_000 {
            break;
        }
    }
    assert!(count > 0);
    // Consumers start at the earliest record kept.
    let offs: Vec<u64> = lines(&e.consume("t", &[]))
        .iter()
        .map(|v| v["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(*offs.last().unwrap(), 1999);
    assert!(offs[0] > 0);
    assert_eq!(offs.len() as u64, 2000 - offs[0]);
    // Retention by age: every record is from 1970, so all sealed segments go.
    e.ok(
        "logd",
        &[
            "topics",
            "alter",
            "t",
            "--retention-bytes",
            "none",
            "--retention-age",
            "1d",
        ],
        b"",
    );
    e.ok("logd", &["retention", "-t", "t"], b"");
    assert_eq!(segment_files(&dir, "log").len(), 1);
    assert!(e.run("logd", &["verify"], b"").status.success());
}

#[test]
fn repair_cuts_or_salvages_a_damaged_sealed_segment() {
    let e = Env::new();
    e.ok(
        "logd",
        &["topics", "create", "t", "--segment-bytes", "64KiB"],
        b"",
    );
    let input = telemetry(20_000, 0);
    e.produce("t", &["--ts", "ts"], &input);
    let dir = e.log().join("topics/t/0");
    let segs = segment_files(&dir, "log");
    assert!(segs.len() > 4, "{segs:?}");
    // A flipped bit in a sealed segment in the middle of the partition.
    let victim = segs[2].clone();
    let mut bytes = fs::read(&victim).unwrap();
    bytes[40_000] ^= 0x04;
    fs::write(&victim, &bytes).unwrap();
    let v = e.run("logd", &["verify"], b"");
    assert_eq!(v.status.code(), Some(1));
    // Recovery leaves such damage alone: no later segment is dropped.
    let r = e.ok("logd", &["recover"], b"");
    assert!(r.contains("left for `logd repair`"), "{r}");
    assert_eq!(segment_files(&dir, "log").len(), segs.len());
    assert_eq!(e.run("logd", &["verify"], b"").status.code(), Some(1));
    let copy = Env::new();
    copy_dir(&e.log(), &copy.log());

    // Plain repair: cut at the damaged frame; everything before keeps its offset.
    let r = e.ok("logd", &["repair"], b"");
    let victim_name = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        r.contains(victim_name) && r.contains("frame CRC mismatch") && r.contains("cut at offset"),
        "{r}"
    );
    let cut: usize = r
        .split("cut at offset ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok())
        .expect("the cut offset");
    let lost: usize = r
        .lines()
        .find_map(|l| {
            l.strip_prefix("t/0: ")?
                .split(" records lost")
                .next()?
                .parse()
                .ok()
        })
        .expect("records lost");
    assert_eq!(cut + lost, 20_000, "{r}");
    assert_eq!(e.run("logd", &["verify"], b"").status.code(), Some(0));
    let got = e.consume("t", &["--value"]);
    let want: String = input.lines().take(cut).map(|l| format!("{l}\n")).collect();
    assert_eq!(got, want);
    assert!(fs::read_dir(&dir).unwrap().any(|d| d
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("repaired-")));
    // Appends go on at the cut.
    e.produce("t", &["--ts", "ts"], &telemetry(5, 0));
    let last = lines(&e.consume("t", &["--from", "-1"]));
    assert_eq!(last[0]["offset"].as_u64(), Some(cut as u64 + 4));

    // --salvage: only the damaged frame's records are lost; the rest come back once each.
    let r = copy.ok("logd", &["repair", "--salvage"], b"");
    assert!(r.contains("salvaged"), "{r}");
    assert_eq!(copy.run("logd", &["verify"], b"").status.code(), Some(0));
    let got = copy.consume("t", &["--value"]);
    let lost: usize = r
        .lines()
        .find_map(|l| {
            l.strip_prefix("t/0: ")?
                .split(" records lost")
                .next()?
                .parse()
                .ok()
        })
        .expect("records lost");
    assert!(lost > 0 && lost < 2000, "{r}");
    assert_eq!(got.lines().count(), 20_000 - lost);
    let mut rest = input.lines();
    for l in got.lines() {
        assert!(rest.any(|x| x == l), "{l} out of order or not written");
    }
}

#[test]
fn a_damaged_time_index_never_makes_a_time_seek_skip_records() {
    let e = Env::new();
    // Timestamps out of order within a range, many frames per segment (one per produce).
    e.ok(
        "logd",
        &["topics", "create", "t", "--segment-bytes", "1MiB"],
        b"",
    );
    for i in 0..40 {
        let mut s = String::new();
        for j in 0..120i64 {
            let ts = i * 50_000 + (j * 7919) % 60_000;
            s.push_str(&format!(
                "{{\"ts\":{ts},\"i\":{i},\"j\":{j},\"pad\":\"{}\"}}\n",
                "p".repeat(40)
            ));
        }
        e.produce("t", &["--ts", "ts"], &s);
    }
    let dir = e.log().join("topics/t/0");
    let tix = segment_files(&dir, "timeindex")[0].clone();
    let good = fs::read(&tix).unwrap();
    let entries = (good.len() - 32) / 24;
    assert!(entries > 10, "{entries} time index entries");
    let targets = [
        "@0", "@123456", "@700000", "@1200000", "@1950000", "@2100000",
    ];
    let want: Vec<String> = targets
        .iter()
        .map(|t| e.consume("t", &["--from", t, "--max", "2"]))
        .collect();
    // Every entry's max_ts_before lowered, raised, or its offset or position changed: a
    // time seek gives the same records each time, before any recovery.
    for k in 0..entries {
        for (field, delta) in [
            (0usize, -30_000i64),
            (0, 30_000),
            (0, i64::MIN / 2),
            (8, 1),
            (16, 7),
        ] {
            let mut b = good.clone();
            let at = 32 + k * 24 + field;
            let v = i64::from_le_bytes(b[at..at + 8].try_into().unwrap());
            b[at..at + 8].copy_from_slice(&v.wrapping_add(delta).to_le_bytes());
            fs::write(&tix, &b).unwrap();
            for (t, w) in targets.iter().zip(&want) {
                assert_eq!(
                    &e.consume("t", &["--from", t, "--max", "2"]),
                    w,
                    "entry {k} field {field} {delta:+}: --from {t}"
                );
            }
        }
    }
    fs::write(&tix, &good).unwrap();
    assert!(e.run("logd", &["verify"], b"").status.success());
}
