//! Every configuration in `examples/` is one a user copies: each must pass `check-config`.

#[test]
fn every_example_configuration_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples directory") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ratewarden"))
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("run check-config");
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        if path.ends_with("quickstart.toml") {
            // The settings it leaves out are printed at their defaults.
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains(
                    "upstream keep-alive: at most 256 idle connections per worker, each for 60s"
                ),
                "{stdout}"
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 3,
        "only {checked} examples found in {}",
        dir.display()
    );
}
