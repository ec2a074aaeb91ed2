//! What a waiting dispute run waits for and until when, for the run's status and its
//! why-waiting line: evidence until the internal deadline, an operator's approval until
//! the same deadline, the network's decision until it escalates, an appeal until its
//! window ends, and an escalated decision with no deadline at all.
//!
//! A pure function of the run's state and the dispute record, so the API computes it
//! without asking the workflow.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::effects::sub;
use super::record::{Dispute, Settings};

/// The deadline of a waiting state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deadline {
    /// What the run waits for (`evidence`, `an appeal`, …).
    pub waiting_for: &'static str,
    /// When the wait ends by itself; `None`: it never does.
    pub until: Option<DateTime<Utc>>,
    /// What that time is (`internal deadline`, `appeal window`, …).
    pub kind: &'static str,
}

/// The deadline of the run's `state` (with its checkpoint `state_data`), or `None` for
/// a state that does not wait.
pub fn deadline(
    state: &str,
    state_data: &Value,
    dispute: &Dispute,
    settings: &Settings,
) -> Option<Deadline> {
    let time = |field: &str| {
        state_data
            .get(field)
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    // The evidence deadline is always the record's: an appeal or a processor's update
    // moves it, and the checkpoint may predate that.
    let evidence = sub(dispute.evidence_due_by, settings.safety_margin);
    Some(match state {
        "awaiting_evidence" => Deadline {
            waiting_for: "evidence",
            until: Some(evidence),
            kind: "internal deadline",
        },
        "review" => Deadline {
            waiting_for: "an operator's approval of the evidence",
            until: Some(evidence),
            kind: "internal evidence deadline",
        },
        "awaiting_decision" => Deadline {
            waiting_for: "the network's decision",
            until: time("escalates_at"),
            kind: "then escalated to an operator",
        },
        "escalated" => Deadline {
            waiting_for: "the network's decision",
            until: None,
            kind: "escalated to an operator, no deadline",
        },
        "lost" => Deadline {
            waiting_for: "an appeal",
            until: time("appeal_until"),
            kind: "appeal window",
        },
        _ => return None,
    })
}
