//! Man pages are generated from the clap Commands and committed under man/. This test fails
//! when one is stale; `KAPPA_UPDATE_MAN=1 cargo test man_pages` (scripts/gen-man.sh) rewrites them.

use std::path::PathBuf;

fn render(cmd: clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .expect("render man page");
    out
}

#[test]
fn man_pages_are_fresh() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("man");
    let pages = [
        ("produce", kappa::cmd::produce::command()),
        ("consume", kappa::cmd::consume::command()),
        ("logd", kappa::cmd::logd::command()),
        ("transform", kappa::cmd::transform::command()),
        ("window", kappa::cmd::window::command()),
        ("store", kappa::cmd::store::command()),
        ("replay", kappa::cmd::replay::command()),
    ];
    let update = std::env::var_os("KAPPA_UPDATE_MAN").is_some();
    let mut stale = Vec::new();
    for (name, cmd) in pages {
        let path = dir.join(format!("{name}.1"));
        let want = render(cmd);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &want).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&want[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale man pages (run scripts/gen-man.sh): {stale:?}"
    );
}

#[test]
fn help_works_for_every_tool() {
    for tool in [
        "produce",
        "consume",
        "logd",
        "transform",
        "window",
        "store",
        "replay",
    ] {
        let o = std::process::Command::new(crate::common::bin(tool))
            .arg("--help")
            .output()
            .unwrap();
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("Exit status"));
    }
}
