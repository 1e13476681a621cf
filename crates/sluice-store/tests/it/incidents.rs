//! Incidents move only forward and log each step; rules keep their origin,
//! are disabled with a reason, expire, and remember each thing they blocked once.

use serde_json::json;
use sluice_store::IncidentStatus;
use sluice_store::IncidentTrigger;
use sluice_store::{ChangeQuery, NewIncident, NewRule};

use crate::each_store;

#[tokio::test]
async fn incidents_move_forward_and_rules_keep_their_origin() {
    each_store(|store| async move {
        let incident = store
            .open_incident(NewIncident {
                service: "shop",
                environment: Some("prod"),
                title: "checkout fails",
                trigger_kind: IncidentTrigger::Manual,
                trigger_detail: None,
                actor: "ana",
                first_symptom_at: None,
            })
            .await
            .unwrap();
        assert_eq!(
            (incident.name(), incident.status.as_str()),
            ("INC-1".into(), "open")
        );
        let resolved = store
            .set_incident_status(1, IncidentStatus::Resolved, "ana", Some("fixed"))
            .await
            .unwrap();
        assert!(resolved.resolved_at.is_some());
        let error = store
            .set_incident_status(1, IncidentStatus::Mitigated, "ana", None)
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("open → mitigated → resolved"),
            "{error}"
        );
        assert!(
            store
                .incidents(Some("shop"), true, 10)
                .await
                .unwrap()
                .is_empty()
        );
        store.set_postmortem(1, "# INC-1\n", "bo").await.unwrap();
        assert_eq!(
            store.incident(1).await.unwrap().postmortem.as_deref(),
            Some("# INC-1\n")
        );

        let spec = json!({ "kind": "require_job", "job": "checkout-regression" });
        let rule = store
            .insert_rule(NewRule {
                service: "shop",
                spec: &spec,
                note: "checkout needs a test",
                incident_id: Some(1),
                actor: "ana",
                expires_at: None,
                description: "every change must run job `checkout-regression`",
            })
            .await
            .unwrap();
        assert_eq!(rule.origin().as_deref(), Some("INC-1 \"checkout fails\""));
        let expired = store
            .insert_rule(NewRule {
                service: "shop",
                spec: &spec,
                note: "",
                incident_id: None,
                actor: "ana",
                expires_at: Some(1),
                description: "",
            })
            .await
            .unwrap();
        let active = store.rules(Some("shop"), true).await.unwrap();
        assert_eq!(
            active.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![rule.id]
        );
        assert!(!expired.is_active(sluice_store::now_ms()));
        store
            .record_block("R1", "shop", None, "run 7", "no job")
            .await
            .unwrap();
        store
            .record_block("R1", "shop", None, "run 7", "no job")
            .await
            .unwrap();
        assert_eq!(store.rule_blocks("R1").await.unwrap().len(), 1);
        store
            .disable_rule(rule.id, "bo", "the job moved")
            .await
            .unwrap();
        assert!(store.disable_rule(rule.id, "bo", "again").await.is_err());
        assert!(store.rules(Some("shop"), true).await.unwrap().is_empty());
        let log = store
            .changes_log(&ChangeQuery {
                service: Some("shop".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let kinds: Vec<&str> = log.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "rule.disabled",
                // Once, however often the rule stops the same run.
                "rule.blocked",
                "rule.added",
                "rule.added",
                "postmortem.edited",
                "incident.resolved",
                "incident.opened"
            ]
        );
    })
    .await;
}
