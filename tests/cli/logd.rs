//! `logd` admin commands.

use crate::common::*;

#[test]
fn topics_lifecycle() {
    let e = Env::new();
    e.ok(
        "logd",
        &[
            "topics",
            "create",
            "a",
            "--partitions",
            "3",
            "--retention-age",
            "30d",
        ],
        b"",
    );
    assert_eq!(
        e.run("logd", &["topics", "create", "a"], b"").status.code(),
        Some(2)
    );
    e.produce("b", &["--ts", "ts"], &telemetry(10, 1_000_000_000_000));
    assert_eq!(e.ok("logd", &["topics", "list"], b""), "a\t3\nb\t1\n");
    let d = lines(&e.ok("logd", &["topics", "describe", "b", "--json"], b""));
    let p = &d[0]["partition_info"][0];
    assert_eq!(p["earliest"], 0);
    assert_eq!(p["latest"], 10);
    assert_eq!(p["first_ts"], 1_000_000_000_000i64);
    assert_eq!(p["last_ts"], 1_000_000_009_000i64);
    assert_eq!(p["segments"], 1);
    let d = lines(&e.ok("logd", &["topics", "describe", "a", "--json"], b""));
    assert_eq!(d[0]["retention_ms"], 30 * 86_400_000i64);
    let human = e.ok("logd", &["topics", "describe", "b"], b"");
    assert!(human.contains("2001-09-09T01:46:40.000Z"), "{human}");
    e.ok("logd", &["topics", "delete", "a"], b"");
    assert_eq!(e.ok("logd", &["topics", "list"], b""), "b\t1\n");
    assert_eq!(
        e.run("logd", &["topics", "describe", "a"], b"")
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        e.run("logd", &["topics", "create", "../x"], b"")
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn groups_admin() {
    let e = Env::new();
    e.produce(
        "t",
        &["--ts", "ts", "--partitions", "2", "--key", "vehicle_id"],
        &telemetry(40, 0),
    );
    e.consume("t", &["--group", "g", "--max", "3"]);
    assert_eq!(e.ok("logd", &["groups", "list"], b""), "g\n");
    e.ok(
        "logd",
        &["groups", "reset", "g", "-t", "t", "--to", "@20000"],
        b"",
    );
    let d = lines(&e.ok("logd", &["groups", "describe", "g", "--json"], b""));
    for v in &d {
        // first record at or after @20000 (epoch seconds: 20,000,000 ms) in each partition
        let p = v["partition"].as_u64().unwrap();
        let recs = lines(&e.consume("t", &["--partition", &p.to_string()]));
        let want = recs
            .iter()
            .position(|r| r["ts"].as_i64().unwrap() >= 20_000_000)
            .unwrap();
        assert_eq!(v["committed"].as_u64().unwrap(), want as u64);
    }
    e.ok(
        "logd",
        &[
            "groups",
            "reset",
            "g",
            "-t",
            "t",
            "--to",
            "latest",
            "--partition",
            "1",
        ],
        b"",
    );
    e.ok("logd", &["groups", "delete", "g"], b"");
    assert_eq!(e.ok("logd", &["groups", "list"], b""), "");
    assert_eq!(
        e.run("logd", &["groups", "describe", "g"], b"")
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn verify_checks_metadata_checksums() {
    let e = Env::new();
    e.produce("t", &[], "{\"a\":1}\n");
    e.consume("t", &["--group", "g"]);
    assert!(e.run("logd", &["verify"], b"").status.success());
    let g = e.log().join("groups/g.json");
    let s = std::fs::read_to_string(&g)
        .unwrap()
        .replace("\"0\":1", "\"0\":7");
    std::fs::write(&g, s).unwrap();
    let v = e.run("logd", &["verify"], b"");
    assert_eq!(v.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&v.stdout).contains("checksum mismatch"));
    let t = e.log().join("topics/t/topic.json");
    let s = std::fs::read_to_string(&t)
        .unwrap()
        .replace("\"partitions\":1", "\"partitions\":2");
    std::fs::write(&t, s).unwrap();
    assert_eq!(e.run("consume", &["-t", "t"], b"").status.code(), Some(1));
}
