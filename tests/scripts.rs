//! The README's two commands on a machine with only Rust: `scripts/quickstart.sh` and
//! `scripts/test.sh` install PostgreSQL themselves when it is missing, through
//! `scripts/ensure-postgres.sh`, checked here in its dry-run mode (nothing is installed).

use std::process::Command;

fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn ensure(pg_bindir: &str) -> (bool, String) {
    let out = Command::new(script("ensure-postgres.sh"))
        .env("ENSURE_POSTGRES_DRY_RUN", "1")
        .env("PG_BINDIR", pg_bindir)
        .output()
        .expect("run ensure-postgres.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn missing_postgres_is_installed_from_debian_packages() {
    let (ok, text) = ensure("/nonexistent/postgresql/bin");
    if !ok {
        // Not root, no sudo or no apt-get: it must say what to install instead.
        assert!(text.contains("install"), "{text}");
        return;
    }
    assert!(
        text.contains("apt-get install -y -q postgresql postgresql-client"),
        "{text}"
    );
    assert!(text.contains("apt-get update"), "{text}");
}

#[test]
fn installed_postgres_is_left_alone() {
    let out = Command::new("sh")
        .args([
            "-c",
            "ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1",
        ])
        .output()
        .expect("sh");
    let bindir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if bindir.is_empty() {
        return; // PostgreSQL elsewhere (PG_BINDIR): nothing to compare with.
    }
    let (ok, text) = ensure(&bindir);
    assert!(ok, "{text}");
    assert!(!text.contains("apt-get"), "{text}");
}

/// The README's commands, and the PGO build that starts a throwaway Postgres of its own.
#[test]
fn both_readme_commands_ensure_postgres_first() {
    for name in ["quickstart.sh", "test.sh", "build-pgo.sh"] {
        let text = std::fs::read_to_string(script(name)).expect("read script");
        // Line numbers of the commands (comments left out).
        let line_of = |needle: &str| {
            text.lines()
                .position(|l| !l.trim_start().starts_with('#') && l.contains(needle))
        };
        let ensure = line_of("scripts/ensure-postgres.sh")
            .unwrap_or_else(|| panic!("{name} does not run ensure-postgres.sh"));
        for needle in ["initdb", "cargo "] {
            if let Some(at) = line_of(needle) {
                assert!(
                    ensure < at,
                    "{name}: {needle} used before ensure-postgres.sh"
                );
            }
        }
    }
}

/// Every script parses (`bash -n`): the ones no test runs whole (the PGO build, the bench)
/// would otherwise fail first for whoever needs them.
#[test]
fn every_script_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("read scripts/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "sh") {
            let out = std::process::Command::new("bash")
                .arg("-n")
                .arg(&path)
                .output()
                .expect("run bash -n");
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "only {checked} scripts found in {}",
        dir.display()
    );
}

/// The frameworks suite's stacks are installed before the tests run: by the README's test
/// command (leniently: a stack it cannot install is skipped) and by CI (strictly: a missing
/// stack fails its test).
#[test]
fn ci_and_test_sh_ensure_the_frameworks_before_cargo_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for path in ["scripts/test.sh", ".ci/run"] {
        let text = std::fs::read_to_string(root.join(path)).expect("read script");
        let line_of = |needle: &str| {
            text.lines()
                .position(|l| !l.trim_start().starts_with('#') && l.contains(needle))
        };
        let ensure = line_of("scripts/ensure-frameworks.sh")
            .unwrap_or_else(|| panic!("{path} does not run ensure-frameworks.sh"));
        let test = line_of("cargo test")
            .or_else(|| line_of("scripts/test.sh"))
            .unwrap_or_else(|| panic!("{path} runs no tests"));
        assert!(
            ensure < test,
            "{path}: tests run before ensure-frameworks.sh"
        );
    }
    let ci = std::fs::read_to_string(root.join(".ci/run")).expect("read .ci/run");
    assert!(
        ci.lines()
            .any(|l| l.trim() == "export POOLER_REQUIRE_FRAMEWORKS=1"),
        ".ci/run must make a missing framework stack fail its test"
    );
}
