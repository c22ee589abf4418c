//! The Dockerfile and the sidecar guide, checked without a container engine: the build step
//! is the one CI already runs (`cargo build --release --locked` via `--locked` everywhere), so
//! here we check the file's promises: a locked build, a non-root user, the configured ports
//! exposed, a health check on /healthz, the documented config path.

use pooler::config::PoolerSettings;

fn dockerfile() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap()
}

/// Instructions with their continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        current.push_str(line.trim_end_matches('\\'));
        current.push(' ');
        if !line.ends_with('\\') {
            let (op, rest) = current
                .trim()
                .split_once(' ')
                .unwrap_or((current.trim(), ""));
            out.push((op.to_ascii_uppercase(), rest.trim().to_string()));
            current.clear();
        }
    }
    out
}

#[test]
fn dockerfile_builds_locked_runs_unprivileged_and_checks_health() {
    let ins = instructions(&dockerfile());
    let all = |op: &str| -> Vec<String> {
        ins.iter()
            .filter(|(o, _)| o == op)
            .map(|(_, r)| r.clone())
            .collect()
    };
    let froms = all("FROM");
    assert!(froms.len() >= 2, "multi-stage build expected: {froms:?}");
    assert!(
        all("RUN").iter().any(|r| r.contains("cargo build")
            && r.contains("--release")
            && r.contains("--locked")),
        "the build must use the lock file"
    );
    let users = all("USER");
    let user = users.last().expect("a USER instruction");
    assert!(
        !["root", "0", "0:0"].contains(&user.as_str()),
        "runs as {user}"
    );
    // The last USER comes after the last FROM: the runtime stage is unprivileged.
    let last_from = ins.iter().rposition(|(o, _)| o == "FROM").unwrap();
    let last_user = ins.iter().rposition(|(o, _)| o == "USER").unwrap();
    assert!(last_user > last_from);
    let exposed: Vec<u16> = all("EXPOSE")
        .iter()
        .flat_map(|r| {
            r.split_whitespace()
                .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        })
        .collect();
    let d = PoolerSettings::default();
    assert!(exposed.contains(&d.listen_port), "{exposed:?}");
    assert!(exposed.contains(&d.metrics_port), "{exposed:?}");
    let health = all("HEALTHCHECK");
    assert!(
        health
            .iter()
            .any(|h| h.contains("/healthz") && h.contains(&d.metrics_port.to_string())),
        "{health:?}"
    );
    assert!(
        all("ENV")
            .iter()
            .any(|e| e.contains("POOLER_CONFIG=/etc/pooler/pooler.toml"))
    );
}

#[test]
fn sidecar_guide_has_probes_scraping_and_sizing() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sidecar.md")).unwrap();
    for needle in [
        "readinessProbe",
        "path: /readyz",
        "livenessProbe",
        "path: /healthz",
        "prometheus.io/scrape",
        "kind: ServiceMonitor",
        "max_connections",
        "default_pool_size",
        "reserve_pool_size",
        "shutdown_timeout",
        "terminationGracePeriodSeconds",
        "/etc/pooler/pooler.toml",
    ] {
        assert!(doc.contains(needle), "docs/sidecar.md lacks {needle}");
    }
}
