//! What ops see of the process: logs without colour codes when stderr is not a terminal,
//! `log_format = "json"` as one object per line, and the variables Kubernetes injects for a
//! Service named `pooler` tolerated (a warning) while typos of settings stay errors.
//! The binary runs `--check`, which logs the config's warnings and exits: no Postgres needed.

use std::path::PathBuf;
use std::process::{Command, Output};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pooler-logs-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// `pooler --check` with only the given environment (the caller's POOLER_* stay out).
fn check(config: &PathBuf, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pooler"));
    cmd.env_clear().arg("--check").arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pooler")
}

/// An ini whose `logfile` the pooler ignores with a warning: something to log.
fn ini_with_a_warning(d: &std::path::Path) -> PathBuf {
    let path = d.join("pgbouncer.ini");
    std::fs::write(
        &path,
        "[databases]\napp = host=127.0.0.1\n[pgbouncer]\nauth_type = trust\n\
         logfile = /var/log/pgbouncer.log\n",
    )
    .expect("ini");
    path
}

#[test]
fn text_logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let d = dir("text");
    let out = check(&ini_with_a_warning(&d), &[]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARN") && stderr.contains("logfile"),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "escape codes in {stderr:?}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn json_logs_are_one_object_per_line() {
    let d = dir("json");
    let out = check(&ini_with_a_warning(&d), &[("POOLER_LOG_FORMAT", "json")]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let warning = lines
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("logfile"))
        })
        .unwrap_or_else(|| panic!("no logfile warning in {stderr}"));
    assert_eq!(warning["level"], "WARN");
    assert!(warning["timestamp"].is_string());
    // The same key in the file.
    let toml = d.join("pooler.toml");
    std::fs::write(
        &toml,
        "[pooler]\nauth_type = \"trust\"\nlog_format = \"json\"\n",
    )
    .unwrap();
    let out = check(&toml, &[("POOLER_PORT", "tcp://10.0.0.1:6432")]);
    assert!(out.status.success(), "{out:?}");
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn kubernetes_service_variables_do_not_stop_the_process() {
    let d = dir("k8s");
    let toml = d.join("pooler.toml");
    std::fs::write(&toml, "[pooler]\nauth_type = \"trust\"\n").unwrap();
    let injected = [
        ("POOLER_PORT", "tcp://10.96.0.12:6432"),
        ("POOLER_PORT_6432_TCP", "tcp://10.96.0.12:6432"),
        ("POOLER_PORT_6432_TCP_PROTO", "tcp"),
        ("POOLER_PORT_6432_TCP_PORT", "6432"),
        ("POOLER_PORT_6432_TCP_ADDR", "10.96.0.12"),
        ("POOLER_SERVICE_HOST", "10.96.0.12"),
        ("POOLER_SERVICE_PORT", "6432"),
    ];
    let out = check(&toml, &injected);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("POOLER_PORT") && stderr.contains("Kubernetes"),
        "{stderr}"
    );

    // A typo of a setting next to them is still refused, by name.
    let mut with_typo = injected.to_vec();
    with_typo.push(("POOLER_DEFAULT_POOL_SISE", "3"));
    let out = check(&toml, &with_typo);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("POOLER_DEFAULT_POOL_SISE"));
    let _ = std::fs::remove_dir_all(&d);
}
