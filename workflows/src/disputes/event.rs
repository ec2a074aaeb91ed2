//! The webhook event the payment processor sends, checked: a body that is not one is
//! refused (400) before anything is stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::money::Currency;

/// What an event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "dispute.created")]
    Created,
    #[serde(rename = "dispute.updated")]
    Updated,
    #[serde(rename = "dispute.closed")]
    Closed,
    #[serde(rename = "dispute.funds_withdrawn")]
    FundsWithdrawn,
    #[serde(rename = "dispute.funds_reinstated")]
    FundsReinstated,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "dispute.created",
            EventType::Updated => "dispute.updated",
            EventType::Closed => "dispute.closed",
            EventType::FundsWithdrawn => "dispute.funds_withdrawn",
            EventType::FundsReinstated => "dispute.funds_reinstated",
        }
    }
}

/// The dispute's status as the network sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkStatus {
    NeedsResponse,
    UnderReview,
    Won,
    Lost,
}

impl NetworkStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkStatus::NeedsResponse => "needs_response",
            NetworkStatus::UnderReview => "under_review",
            NetworkStatus::Won => "won",
            NetworkStatus::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<NetworkStatus> {
        [
            NetworkStatus::NeedsResponse,
            NetworkStatus::UnderReview,
            NetworkStatus::Won,
            NetworkStatus::Lost,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merchant {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// The dispute as an event carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisputeData {
    pub id: String,
    pub charge: String,
    /// Minor units; a float (`42.0`) is refused.
    pub amount: u64,
    pub currency: Currency,
    pub reason: String,
    pub status: NetworkStatus,
    pub evidence_due_by: DateTime<Utc>,
    pub merchant: Merchant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    pub dispute: DisputeData,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub created: DateTime<Utc>,
    pub data: EventData,
}

/// The longest id (event, dispute, charge) and free text accepted.
const MAX_ID: usize = 255;

impl Event {
    /// Parses and checks a raw body; the error says what is wrong, for the 400.
    pub fn parse(body: &[u8]) -> Result<Event, String> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
        let event: Event = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })?;
        let dispute = &event.data.dispute;
        for (field, value) in [
            ("id", event.id.as_str()),
            ("data.dispute.id", dispute.id.as_str()),
            ("data.dispute.charge", dispute.charge.as_str()),
            ("data.dispute.reason", dispute.reason.as_str()),
        ] {
            if value.is_empty() || value.len() > MAX_ID || value.chars().any(char::is_control) {
                return Err(format!(
                    "{field}: 1 to {MAX_ID} characters, no control characters"
                ));
            }
        }
        if i64::try_from(dispute.amount).is_err() {
            return Err("data.dispute.amount: too large".into());
        }
        waymark_services::mail::parse_mailbox(
            "data.dispute.merchant.email",
            &dispute.merchant.email,
        )
        .map_err(|e| e.to_string())?;
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> serde_json::Value {
        json!({"id": "evt_1", "type": "dispute.created", "created": "2030-01-01T00:00:00Z",
               "data": {"dispute": {"id": "dp_1", "charge": "ch_1", "amount": 4200, "currency": "usd",
               "reason": "fraudulent", "status": "needs_response", "evidence_due_by": "2030-01-20T00:00:00Z",
               "merchant": {"email": "m@example.test", "name": "Shop"}}}})
    }

    #[test]
    fn a_valid_event_parses() {
        let parsed = Event::parse(event().to_string().as_bytes()).unwrap();
        assert_eq!(parsed.kind, EventType::Created);
        assert_eq!(parsed.data.dispute.amount, 4200);
        assert_eq!(parsed.data.dispute.currency.code(), "USD");
    }

    #[test]
    fn malformed_events_are_refused_naming_the_field() {
        type Change = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "amount",
                Box::new(|e| e["data"]["dispute"]["amount"] = json!(42.5)),
            ),
            (
                "amount",
                Box::new(|e| e["data"]["dispute"]["amount"] = json!(-1)),
            ),
            (
                "currency",
                Box::new(|e| e["data"]["dispute"]["currency"] = json!("xyz")),
            ),
            ("type", Box::new(|e| e["type"] = json!("dispute.deleted"))),
            ("created", Box::new(|e| e["created"] = json!("yesterday"))),
            (
                "status",
                Box::new(|e| e["data"]["dispute"]["status"] = json!("pending")),
            ),
            (
                "email",
                Box::new(|e| e["data"]["dispute"]["merchant"]["email"] = json!("nobody")),
            ),
            ("id", Box::new(|e| e["id"] = json!(""))),
            ("dispute", Box::new(|e| e["data"] = json!({}))),
        ];
        for (field, change) in cases {
            let mut bad = event();
            change(&mut bad);
            let error = Event::parse(bad.to_string().as_bytes()).unwrap_err();
            assert!(error.contains(field), "{field}: {error}");
        }
        assert!(Event::parse(b"not json").unwrap_err().contains("not JSON"));
    }
}
