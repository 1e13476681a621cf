//! Good files validate into the settings they describe.

use std::path::Path;
use std::time::Duration;

use sluice_spec::{ChangeKind, Sticky, Strategy};

#[test]
fn the_design_example_validates() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/good/shop.yaml"),
    )
    .unwrap();
    let spec = sluice_spec::parse("shop.yaml", &text).unwrap();
    assert_eq!(spec.service, "shop");
    assert_eq!(spec.pipeline.jobs.len(), 2);
    let integration = spec.job("integration").unwrap();
    assert_eq!(integration.needs, ["unit"]);
    assert_eq!(integration.timeout, Duration::from_secs(600));
    assert_eq!(integration.env["SHOP_MODE"], "test");
    assert_eq!(spec.pipeline.artifact, ["app/", "scripts/start.sh"]);
    let health = spec.run.as_ref().unwrap().health.as_ref().unwrap();
    assert_eq!((health.healthy, health.unhealthy), (2, 3));
    let dev = spec.environment("dev").unwrap();
    assert!(dev.deploy.auto);
    assert_eq!(dev.config["LOG_LEVEL"], "debug");
    let pre = spec.environment("pre-prod").unwrap();
    assert_eq!(pre.deploy.soak, Some(Duration::from_secs(600)));
    assert_eq!(pre.data.copy_from.as_deref(), Some("prod"));
    let prod = spec.environment("prod").unwrap();
    assert_eq!(prod.instances, 4);
    assert!(prod.deploy.freeze[0].contains(30, 17, 13, 11, 5));
    let Strategy::Ab(ab) = &prod.strategy else {
        panic!("prod should be ab")
    };
    assert_eq!(ab.steps, [1, 5, 25, 50, 100]);
    assert_eq!(ab.min_requests, 1200);
    assert_eq!(ab.sticky, Sticky::Cookie);
}

#[test]
fn job_filters_select_changes() {
    let text = "service: s\npipeline:\n  jobs:\n    deploy-docs:\n      if: mainline\n      steps: [{ run: 'true' }]\n    release:\n      branches: [main, release/*]\n      steps: [{ run: 'true' }]\n";
    let spec = sluice_spec::parse("s.yaml", text).unwrap();
    let docs = &spec.job("deploy-docs").unwrap().filter;
    assert!(docs.matches(ChangeKind::Mainline, "main"));
    assert!(!docs.matches(ChangeKind::Review, "feature/x"));
    let release = &spec.job("release").unwrap().filter;
    assert!(release.matches(ChangeKind::Review, "release/1.2"));
    assert!(!release.matches(ChangeKind::Review, "feature/x"));
}

#[test]
fn scalars_of_any_kind_become_config_strings() {
    let text = "service: s\npipeline:\n  jobs:\n    a:\n      steps: [{ run: 'true' }]\nenvironments:\n  dev:\n    listen: 127.0.0.1:9\n    config: { WORKERS: 4, DEBUG: true, RATIO: 0.5, NAME: x }\n";
    let spec = sluice_spec::parse("s.yaml", text).unwrap();
    let config = &spec.environment("dev").unwrap().config;
    assert_eq!(config["WORKERS"], "4");
    assert_eq!(config["DEBUG"], "true");
    assert_eq!(config["RATIO"], "0.5");
}
