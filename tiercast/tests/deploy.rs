//! What `deploy/` ships is usable as shipped: the Kubernetes manifests pass the API schemas
//! (kubernetes-validate, offline), the node configs inside their ConfigMaps and the local
//! topology's configs pass `tiercast check`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    out.sort();
    out
}

/// `tiercast check` on `config`, with the cluster secret from the environment as the
/// manifests provide it: its success and what it printed.
fn check_once(config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tiercast"))
        .args(["check", "--config"])
        .arg(config)
        .env("TIERCAST_CLUSTER_SECRET", "a-secret-from-kubernetes")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The placeholders `deploy/` ships for keys and secrets.
const PLACEHOLDERS: [&str; 3] = [
    "\"local-cluster-secret-change-me\"",
    "\"change-me\"",
    "\"local\"",
];

/// `config` is a valid node once its operator has put their own keys and secrets in place of
/// the placeholders; before that, `check` names the stream keys left (the cluster secret here
/// comes from the environment, as the manifests give it).
fn check(config: &Path) {
    let text = std::fs::read_to_string(config).unwrap();
    let (ok, out) = check_once(config);
    if text.contains("[[streams]]") {
        assert!(!ok, "{}: a placeholder key was taken", config.display());
        assert!(out.contains("streams[0].key"), "{out}");
    } else {
        assert!(ok, "{}: {out}", config.display());
    }
    let mut own = text;
    for (i, placeholder) in PLACEHOLDERS.iter().enumerate() {
        own = own.replace(
            placeholder,
            &format!("\"an-operator-secret-{i}-0123456789\""),
        );
    }
    let mine = std::env::temp_dir().join(format!(
        "tiercast-mine-{}-{}",
        std::process::id(),
        config.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&mine, own).unwrap();
    let (ok, out) = check_once(&mine);
    std::fs::remove_file(&mine).unwrap();
    assert!(ok, "{}: {out}", config.display());
}

#[test]
fn the_kubernetes_manifests_pass_the_api_schemas() {
    let manifests = files(&deploy().join("k8s"), "yaml");
    assert!(manifests.len() >= 5, "{manifests:?}");
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("kubernetes-validate runs (scripts/setup-tests.sh installs it from PyPI)");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    for kind in [
        "statefulset/tiercast-origin",
        "deployment/tiercast-distribution",
        "deployment/tiercast-edge-eu-west",
        "deployment/tiercast-edge-us-east",
        "service/tiercast-ingest",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}")),
            "{report}"
        );
    }
}

#[test]
fn the_configs_in_the_config_maps_are_valid_nodes() {
    let scratch = std::env::temp_dir().join(format!("tiercast-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    // Every ConfigMap's node.toml, one file each, by a YAML parser.
    let extract = "import sys, yaml\n\
        for path in sys.argv[2:]:\n\
        \x20   for doc in yaml.safe_load_all(open(path)):\n\
        \x20       if doc and doc.get('kind') == 'ConfigMap':\n\
        \x20           name = doc['metadata']['name']\n\
        \x20           open(f\"{sys.argv[1]}/{name}.toml\", 'w').write(doc['data']['node.toml'])\n\
        \x20           print(name)\n";
    let out = Command::new("python3")
        .args(["-c", extract])
        .arg(&scratch)
        .args(files(&deploy().join("k8s"), "yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let names = String::from_utf8_lossy(&out.stdout).into_owned();
    let roles = [
        ("tiercast-origin", "origin"),
        ("tiercast-distribution", "distribution"),
        ("tiercast-edge-eu-west", "edge"),
        ("tiercast-edge-us-east", "edge"),
    ];
    for (name, role) in roles {
        assert!(names.lines().any(|n| n == name), "{names}");
        let config = scratch.join(format!("{name}.toml"));
        check(&config);
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains(&format!("role = \"{role}\"")), "{text}");
    }
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn the_local_topology_configs_are_valid_nodes() {
    let local = deploy().join("local");
    let configs = files(&local, "toml");
    assert_eq!(configs.len(), 5, "{configs:?}");
    for config in &configs {
        check(config);
    }
    // Five processes on one machine: no two may want the same port.
    let mut seen = std::collections::HashSet::new();
    for config in &configs {
        let text = std::fs::read_to_string(config).unwrap();
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("listen"))
        {
            let addr = line.split('"').nth(1).unwrap().to_owned();
            assert!(
                seen.insert(addr.clone()),
                "{addr} twice ({})",
                config.display()
            );
        }
    }
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(local.join("run.sh"))
        .status()
        .unwrap();
    assert!(syntax.success());
}
