//! Ids in paths as people write them: `INC-7` or `7` for an incident, `R3`
//! or `3` for a rule, in the API and on the dashboard alike.

use serde::{Deserialize, Deserializer, de::Error};

/// An incident's id from a path segment.
#[derive(Clone, Copy, Debug)]
pub struct IncidentId(pub i64);

/// A rule's id from a path segment.
#[derive(Clone, Copy, Debug)]
pub struct RuleId(pub i64);

impl<'de> Deserialize<'de> for IncidentId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        sluice_store::parse_incident_id(&text)
            .map(IncidentId)
            .map_err(D::Error::custom)
    }
}

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        sluice_store::parse_rule_id(&text)
            .map(RuleId)
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incident(text: &str) -> Result<i64, String> {
        serde_json::from_value::<IncidentId>(serde_json::json!(text))
            .map(|i| i.0)
            .map_err(|e| e.to_string())
    }

    fn rule(text: &str) -> Result<i64, String> {
        serde_json::from_value::<RuleId>(serde_json::json!(text))
            .map(|r| r.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn ids_are_read_as_people_write_them() {
        for (text, id) in [
            ("INC-2", Some(2)),
            ("inc-2", Some(2)),
            ("2", Some(2)),
            ("INC-", None),
            ("INC-+2", None),
            ("0", None),
            ("INC-2x", None),
        ] {
            assert_eq!(incident(text).ok(), id, "{text}");
        }
        for (text, id) in [
            ("R1", Some(1)),
            ("r1", Some(1)),
            ("1", Some(1)),
            ("R", None),
            ("R-1", None),
            ("RR1", None),
        ] {
            assert_eq!(rule(text).ok(), id, "{text}");
        }
        assert!(rule("x").unwrap_err().contains("write RN, such as R3"));
    }
}
