//! The Dockerfile and the sidecar guide, checked without a container engine: the build step
//! is the one CI already runs (`cargo build --release --locked` via `--locked` everywhere), so
//! here we check the file's promises: a locked build, a numeric non-root user, the configured
//! ports exposed, a health check that needs no curl (`pooler --health-check`, run here against
//! a live and a dead pooler), the documented config path, a `.dockerignore`; and the sidecar
//! manifest's Pod Security ("restricted") and Service ports.

mod common;

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
    // Numeric (uid or uid:gid), so Kubernetes can enforce runAsNonRoot without /etc/passwd.
    assert!(
        user.split(':')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        "USER {user} is not numeric"
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
        health.iter().any(|h| h.contains("--health-check")),
        "{health:?}"
    );
    // The runtime image installs no curl or wget: the check is the binary itself.
    let runtime = &ins[last_from..];
    for (op, rest) in runtime {
        assert!(
            !(rest.contains("curl") || rest.contains("wget")) || op == "HEALTHCHECK",
            "{op} {rest}"
        );
    }
    let ignore =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.dockerignore")).unwrap();
    for needle in ["target", ".git"] {
        assert!(
            ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == needle),
            ".dockerignore lacks {needle}"
        );
    }
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

/// The Deployment's YAML block of docs/sidecar.md, and each container's lines in it.
fn manifest_containers(doc: &str) -> (String, Vec<String>) {
    let start = doc.find("kind: Deployment").expect("a Deployment");
    let end = start + doc[start..].find("```").expect("end of the block");
    let block = doc[start..end].to_string();
    let mut containers = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for line in block.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some((at, text)) = current.as_mut() {
            if indent > *at || line.trim().is_empty() {
                text.push_str(line);
                text.push('\n');
                continue;
            }
            containers.push(std::mem::take(text));
            current = None;
        }
        if line.trim_start().starts_with("- name: ") && line.contains("name: ") {
            // Only entries of initContainers/containers carry an image below them.
            current = Some((indent, format!("{line}\n")));
        }
    }
    if let Some((_, text)) = current {
        containers.push(text);
    }
    containers.retain(|c| c.contains("image:"));
    (block, containers)
}

/// The "restricted" Pod Security Standard: non-root, no privilege escalation, every
/// capability dropped, the runtime's seccomp profile; for every container of the pod.
#[test]
fn sidecar_manifest_passes_the_restricted_pod_security_standard() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/sidecar.md")).unwrap();
    let (block, containers) = manifest_containers(&doc);
    assert_eq!(containers.len(), 2, "pooler and app: {containers:?}");
    let pod_level = block
        .split("initContainers:")
        .next()
        .unwrap_or_default()
        .to_string();
    for c in &containers {
        let has = |needle: &str| c.contains(needle) || pod_level.contains(needle);
        assert!(has("runAsNonRoot: true"), "{c}");
        assert!(has("seccompProfile: {type: RuntimeDefault}"), "{c}");
        assert!(c.contains("allowPrivilegeEscalation: false"), "{c}");
        assert!(c.contains("capabilities: {drop: [ALL]}"), "{c}");
        assert!(
            !c.contains("privileged: true") && !c.contains("hostPort"),
            "{c}"
        );
    }
    // The image's uid, if the pooler names one, is the Dockerfile's.
    let pooler = containers
        .iter()
        .find(|c| c.contains("name: pooler"))
        .unwrap();
    if let Some(uid) = pooler.split("runAsUser: ").nth(1) {
        let uid = uid.split_whitespace().next().unwrap();
        assert!(
            dockerfile().contains(&format!("USER {uid}")),
            "runAsUser {uid}"
        );
    }
    // Probes and Service targetPorts by number: names of a native sidecar's ports are not
    // resolved by Services before Kubernetes 1.32, and the page supports 1.29+.
    for line in doc.lines().filter(|l| l.contains("targetPort:")) {
        let value = line.split("targetPort:").nth(1).unwrap();
        let value = value.trim().trim_end_matches('}').trim();
        assert!(
            value.parse::<u16>().is_ok(),
            "targetPort {value:?} in {line}"
        );
    }
}

/// `pooler --health-check` as the HEALTHCHECK runs it: 0 against a serving pooler (by its
/// /healthz, or by its client port with the metrics listener off), 1 against nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_flag_probes_the_running_pooler() {
    let metrics = common::free_port();
    // No Postgres needed: /healthz is the process's own health.
    let pooler = common::Pooler::start_full(
        1,
        "x",
        &format!("auth_type = \"trust\"\nmetrics_port = {metrics}"),
        "",
        "",
    )
    .await;
    let dir = pooler.dir.clone();
    let check = |name: &str, toml: String| {
        let path = dir.join(name);
        std::fs::write(&path, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pooler"))
            .arg("--health-check")
            .env("POOLER_CONFIG", &path)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = tokio::task::block_in_place(|| {
        check(
            "metrics.toml",
            format!("[pooler]\nauth_type = \"trust\"\nmetrics_port = {metrics}\n"),
        )
    });
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("/healthz"), "{out}");
    let (code, out) = tokio::task::block_in_place(|| {
        check(
            "port.toml",
            format!(
                "[pooler]\nauth_type = \"trust\"\nmetrics_port = 0\nlisten_port = {}\n",
                pooler.port()
            ),
        )
    });
    assert_eq!(code, Some(0), "{out}");
    let dead = common::free_port();
    let (code, out) = tokio::task::block_in_place(|| {
        check(
            "dead.toml",
            format!("[pooler]\nauth_type = \"trust\"\nmetrics_port = {dead}\n"),
        )
    });
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unhealthy"), "{out}");
}
