//! Topic, group and table names follow Kafka's rule (`[A-Za-z0-9._-]`, 1 to 249 characters,
//! not `.` or `..`) in every tool: hostile names are refused before any path is built.

use crate::common::*;

#[test]
fn hostile_names_are_refused_everywhere() {
    let e = Env::new();
    e.produce("ok", &[], "{\"n\":1}\n");
    let long = "a".repeat(250);
    let hostile = [
        "..",
        ".",
        "",
        "../outside",
        "a/b",
        "/etc/passwd",
        "a b",
        "é",
        "x;rm",
        long.as_str(),
    ];
    for name in hostile {
        let at = format!("{name}@v1");
        let cases: Vec<(&str, Vec<&str>, &[u8])> = vec![
            ("produce", vec!["-t", name], b"{\"n\":1}\n"),
            ("consume", vec!["-t", name], b""),
            ("consume", vec!["-t", "ok", "--group", name], b""),
            ("logd", vec!["topics", "create", name], b""),
            ("logd", vec!["topics", "describe", name], b""),
            ("logd", vec!["groups", "describe", name], b""),
            ("replay", vec!["-t", name], b""),
            (
                "replay",
                vec!["-t", "ok", "--group", name, "--from-committed"],
                b"",
            ),
            ("store", vec!["--table", name, "--key", "n"], b"{\"n\":1}\n"),
            ("store", vec!["--table", &at, "--key", "n"], b"{\"n\":1}\n"),
            (
                "store",
                vec!["--table", "t", "--key", "n", "--commit-group", name],
                b"{\"n\":1}\n",
            ),
            ("store", vec!["get", name, "k"], b""),
            ("store", vec!["export", name], b""),
            ("store", vec!["drop", name], b""),
        ];
        for (tool, args, stdin) in cases {
            let o = e.run(tool, &args, stdin);
            assert_eq!(o.status.code(), Some(2), "{tool} {args:?}");
            let msg = String::from_utf8_lossy(&o.stderr);
            assert!(
                msg.contains("invalid") && msg.contains(" name "),
                "{tool} {args:?}: {msg}"
            );
        }
    }
    // Nothing was created outside the log directory, nor any entry named like the attempts.
    let top: Vec<String> = std::fs::read_dir(e.dir.path())
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(top, ["log"]);
    for sub in ["topics", "groups", "tables"] {
        let Ok(rd) = std::fs::read_dir(e.log().join(sub)) else {
            continue;
        };
        for d in rd {
            let n = d.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                ["ok", "ok.json", "ok.lock"].contains(&n.as_str()) || n.starts_with("ok"),
                "unexpected {sub}/{n}"
            );
        }
    }
}
