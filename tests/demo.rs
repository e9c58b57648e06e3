//! `sluice demo --scripted`: the README's main job runs a whole canary through real processes
//! (control plane, gateway proxy over xDS, two upstreams) and verifies every step.

mod support;

use support::*;

#[test]
fn the_scripted_demo_holds_every_check() {
    let port = |_| format!("127.0.0.1:{}", closed_port());
    let (gw, xds, api) = (port(0), port(1), port(2));
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(sluice_bin())
        .args([
            "demo",
            "--scripted",
            "--gateway",
            &gw,
            "--xds-address",
            &xds,
            "--api-address",
            &api,
            "--work-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("sluice demo");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the scripted demo failed");
    assert_eq!(
        text.matches("\nok  ").count() + usize::from(text.starts_with("ok  ")),
        7,
        "seven checks"
    );
    assert!(text.contains("all checks held"));
    assert!(!text.contains("FAIL"));
}
