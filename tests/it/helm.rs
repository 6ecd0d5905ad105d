//! The Helm chart, without a `helm` binary: the config block in values.yaml passes the gateway's
//! own validation, values.yaml matches values.schema.json, templates reference only values that
//! exist and keep their blocks balanced, and yamllint passes.

use std::collections::BTreeSet;
use std::path::Path;

use ares_gateway::config::Config;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/ares-gateway");

fn values() -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(Path::new(CHART).join("values.yaml")).unwrap())
        .unwrap()
}

fn templates() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(Path::new(CHART).join("templates")).unwrap() {
        let p = entry.unwrap().path();
        out.push((
            p.file_name().unwrap().to_string_lossy().into_owned(),
            std::fs::read_to_string(&p).unwrap(),
        ));
    }
    assert!(
        out.len() >= 9,
        "templates missing: {:?}",
        out.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    out
}

#[test]
fn values_config_block_passes_the_gateway_validation() {
    let v = values();
    let config = serde_yaml::to_string(&v["config"]).unwrap();
    // The environment the Deployment gives the pod.
    let env = |k: &str| -> Option<String> {
        match k {
            "ARES_UPSTREAM" => Some(v["upstream"].as_str().unwrap().to_string()),
            "ARES_REPLICAS" => Some(v["replicaCount"].as_u64().unwrap().to_string()),
            "ARES_ADMIN_SECRET" => Some("chart-test-admin-secret-01".into()),
            "ARES_JWT_SECRET" => Some("chart-test-jwt-secret-0123456789abcdef".into()),
            "REDIS_URL" => Some(v["secrets"]["redisUrl"].as_str().unwrap().to_string()),
            "ARES_STORE" => Some(v["store"].as_str().unwrap().to_string()),
            "ARES_DATA_DIR" => Some("/var/lib/ares-gateway".into()),
            _ => None,
        }
    };
    let cfg = Config::from_yaml(&config, &env)
        .unwrap_or_else(|p| panic!("values.yaml config invalid: {p:?}"));
    assert!(matches!(
        cfg.store.backend,
        ares_gateway::config::StoreBackend::Redis { .. }
    ));
    assert_eq!(cfg.limits.replicas, 2);
    assert_eq!(cfg.server.listen.port(), 8080);
    assert_eq!(cfg.server.metrics_listen.unwrap().port(), 9090);
    assert!(cfg.routes.classify("/v1/chat").is_some());
    // Without secrets the chart's config refuses to start, naming the variables.
    let err = Config::from_yaml(&config, &|k| {
        if k.starts_with("ARES_ADMIN") || k.starts_with("ARES_JWT") {
            None
        } else {
            env(k)
        }
    })
    .unwrap_err();
    let text: String = err.iter().map(|p| p.to_string()).collect();
    assert!(text.contains("ARES_ADMIN_SECRET") && text.contains("ARES_JWT_SECRET"));
}

#[test]
fn values_match_the_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(CHART).join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let values: serde_json::Value = serde_json::to_value(values()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&values)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    // The schema catches a typo.
    let mut typo = values.clone();
    typo["replicaCont"] = serde_json::json!(3);
    assert!(!validator.is_valid(&typo));
    // Helm refuses an embedded store with more than one replica (it validates the values
    // against this schema before rendering); one replica without autoscaling is fine.
    let mut embedded = values.clone();
    embedded["store"] = serde_json::json!("embedded");
    assert!(
        !validator.is_valid(&embedded),
        "embedded with replicaCount 2"
    );
    embedded["replicaCount"] = serde_json::json!(1);
    assert!(!validator.is_valid(&embedded), "embedded with autoscaling");
    embedded["autoscaling"]["enabled"] = serde_json::json!(false);
    let errors: Vec<String> = validator
        .iter_errors(&embedded)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn the_chart_config_is_the_shipped_gateway_yaml() {
    let shipped: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.yaml")).unwrap(),
    )
    .unwrap();
    assert!(
        values()["config"] == shipped,
        "helm/ares-gateway/values.yaml `config` differs from gateway.yaml: copy it over"
    );
}

#[test]
fn the_embedded_store_gets_a_claim_one_replica_and_recreate() {
    let all: String = templates().into_iter().map(|t| t.1).collect();
    for needle in [
        "kind: PersistentVolumeClaim",
        "persistentVolumeClaim:",
        "mountPath: /var/lib/ares-gateway",
        "type: Recreate",
        "{{- fail \"store: embedded",
        "helm.sh/resource-policy: keep",
        "name: ARES_STORE",
    ] {
        assert!(all.contains(needle), "chart lacks {needle}");
    }
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    assert!(dockerfile.contains("VOLUME [\"/var/lib/ares-gateway\"]"));
    assert!(dockerfile.contains("ARES_DATA_DIR=/var/lib/ares-gateway"));
}

fn resolves(values: &serde_yaml::Value, path: &str) -> bool {
    let mut cur = values;
    for part in path.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    true
}

#[test]
fn templates_reference_only_values_that_exist() {
    let v = values();
    let mut seen = BTreeSet::new();
    for (name, text) in templates() {
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".Values.") {
            rest = &rest[i + ".Values.".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .collect();
            let path = path.trim_end_matches('.').to_string();
            assert!(
                resolves(&v, &path),
                "{name}: .Values.{path} is not in values.yaml"
            );
            seen.insert(path);
        }
    }
    for must in [
        "secrets.existingSecret",
        "config",
        "autoscaling.enabled",
        "serviceMonitor.enabled",
        "prometheusRule.enabled",
        "grafanaDashboard.enabled",
        "podDisruptionBudget.enabled",
        "store",
        "persistence.existingClaim",
        "persistence.size",
    ] {
        assert!(seen.contains(must), "no template uses .Values.{must}");
    }
}

#[test]
fn template_blocks_are_balanced_and_the_deployment_is_hardened() {
    for (name, text) in templates() {
        assert_eq!(
            text.matches("{{").count(),
            text.matches("}}").count(),
            "{name}: unbalanced braces"
        );
        let opens = [
            "{{- if ",
            "{{ if ",
            "{{- with ",
            "{{ with ",
            "{{- range ",
            "{{ range ",
            "{{- define ",
            "{{ define ",
        ]
        .iter()
        .map(|o| text.matches(o).count())
        .sum::<usize>();
        let ends = text.matches("{{- end").count() + text.matches("{{ end").count();
        assert_eq!(opens, ends, "{name}: {opens} blocks opened, {ends} ended");
    }
    let all: String = templates().into_iter().map(|t| t.1).collect();
    for needle in [
        "path: /healthz",
        "path: /readyz",
        ".Values.securityContext",
        ".Values.podSecurityContext",
        "topologySpreadConstraints",
        "kind: HorizontalPodAutoscaler",
        "kind: PodDisruptionBudget",
        "kind: ServiceMonitor",
        "kind: PrometheusRule",
        "kind: ConfigMap",
        "kind: Secret",
        "secretKeyRef",
    ] {
        assert!(all.contains(needle), "chart lacks {needle}");
    }
    let v = values();
    assert_eq!(
        v["podSecurityContext"]["runAsNonRoot"],
        serde_yaml::Value::Bool(true)
    );
    assert_eq!(
        v["securityContext"]["readOnlyRootFilesystem"],
        serde_yaml::Value::Bool(true)
    );
    assert!(Path::new(CHART).join("templates/NOTES.txt").is_file());
}

#[test]
fn yamllint_passes_on_values_and_chart() {
    let out = std::process::Command::new("yamllint")
        .args(["-s", "-c"])
        .arg(Path::new(CHART).join(".yamllint"))
        .arg(Path::new(CHART).join("values.yaml"))
        .arg(Path::new(CHART).join("Chart.yaml"))
        .output()
        .expect("yamllint is required (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn monitoring_objects_need_the_operator_crds_and_ship_files_that_exist() {
    let mut files = 0;
    for (name, text) in templates() {
        // Operator objects only where the cluster has the CRDs (else the install would fail).
        for kind in ["ServiceMonitor", "PrometheusRule"] {
            if text.contains(&format!("kind: {kind}")) {
                assert!(
                    text.contains(&format!(
                        ".Capabilities.APIVersions.Has \"monitoring.coreos.com/v1/{kind}\""
                    )),
                    "{name}: a {kind} without the CRD check"
                );
            }
        }
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".Files.Get \"") {
            rest = &rest[i + ".Files.Get \"".len()..];
            let file = &rest[..rest.find('"').unwrap()];
            assert!(
                Path::new(CHART).join(file).is_file(),
                "{name}: {file} is not in the chart"
            );
            files += 1;
        }
    }
    assert_eq!(files, 2, "the rules and the dashboard");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(CHART).join("monitoring/dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(dash["uid"], "ares-gateway");
}
