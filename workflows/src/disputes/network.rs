//! The card network, as the workflow reaches it: over HTTP at
//! `WAYMARK_DISPUTE_NETWORK_URL`, or, unset, an embedded simulator that accepts every
//! submission and (configured so) decides it after a delay through Waymark's own
//! signed webhook route.
//!
//! A submission is `POST {url}/disputes/{id}/submissions` with the evidence packet and
//! `Idempotency-Key: dispute:<id>:cycle:<n>`, so a retried step (or a restarted
//! process) never submits twice. 5xx, timeouts and connection errors are retryable;
//! a 4xx is the network refusing the packet: a fatal step error carrying its reason,
//! which holds the run for an operator.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use waymark_engine::StepError;

#[derive(Debug, Clone)]
pub enum Network {
    Http {
        client: reqwest::Client,
        base: url::Url,
    },
    Simulator(Arc<Simulator>),
}

/// Accepts everything and remembers what it was sent (by idempotency key), for a
/// Waymark without a network to talk to. Given a [`SimulatedDecision`], it also
/// decides each submitted dispute after a delay: the dispute run waits for that
/// instant with a durable timer (state `simulated_decision`), then sends
/// `dispute.closed` to Waymark's own signed webhook route, as the processor would.
#[derive(Debug, Default)]
pub struct Simulator {
    accepted: Mutex<Vec<(String, Value)>>,
    decision: Option<SimulatedDecision>,
    /// Where Waymark's webhook route is: `WAYMARK_PUBLIC_URL`, or the address `serve`
    /// bound (known only once it has).
    webhook_base: RwLock<Option<url::Url>>,
}

/// What the simulator decides, and how long after the submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedDecision {
    /// `won` or `lost`.
    pub outcome: String,
    pub delay: Duration,
}

impl Simulator {
    /// The requests it accepted, one per idempotency key.
    pub fn accepted(&self) -> Vec<(String, Value)> {
        self.accepted.lock().expect("simulator lock").clone()
    }

    /// The decision it makes, if it makes one.
    pub fn decision(&self) -> Option<&SimulatedDecision> {
        self.decision.as_ref()
    }

    /// Waymark's base URL, to which the decision is sent.
    pub fn set_webhook_base(&self, base: url::Url) {
        *self.webhook_base.write().expect("simulator lock") = Some(base);
    }

    /// Sends `body` (a `dispute.closed` event) to `tenant`'s webhook route, signed with
    /// `secret` at `timestamp`. A retryable error until Waymark answers 2xx (a
    /// duplicate included: a retried step sends the same event id).
    pub async fn send_decision(
        &self,
        tenant: &str,
        secret: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Result<(), StepError> {
        let base = self
            .webhook_base
            .read()
            .expect("simulator lock")
            .clone()
            .ok_or_else(|| {
                StepError::retryable(
                    "the network simulator has no Waymark URL to send its decision to; \
                     set WAYMARK_PUBLIC_URL",
                )
            })?;
        let mut url = base.clone();
        url.path_segments_mut()
            .map_err(|_| StepError::fatal(format!("the URL {base} cannot take a path")))?
            .pop_if_empty()
            .extend(["v1", "webhooks", tenant, "disputes"]);
        let response = reqwest::Client::new()
            .post(url)
            .timeout(Duration::from_secs(30))
            .header("content-type", "application/json")
            .header(
                super::signature::HEADER,
                super::signature::sign(&[secret], timestamp, body),
            )
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                StepError::retryable(format!("Waymark's webhook route did not answer: {e}"))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(StepError::retryable(format!(
            "Waymark's webhook route answered {status} to the simulated decision: {}",
            text.chars().take(300).collect::<String>()
        )))
    }
}

impl Network {
    /// Over HTTP at `base` (a request gives up after `timeout`).
    pub fn http(base: url::Url, timeout: Duration) -> Network {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("an HTTP client without TLS options builds");
        Network::Http { client, base }
    }

    /// A simulator that accepts and never decides.
    pub fn simulator() -> Network {
        Network::Simulator(Arc::default())
    }

    /// A simulator that decides every submission after a delay (see [`Simulator`]).
    pub fn simulator_deciding(decision: SimulatedDecision) -> Network {
        Network::Simulator(Arc::new(Simulator {
            decision: Some(decision),
            ..Simulator::default()
        }))
    }

    /// The simulator's decision, when this is a simulator that decides.
    pub fn simulated_decision(&self) -> Option<&SimulatedDecision> {
        match self {
            Network::Simulator(sim) => sim.decision(),
            Network::Http { .. } => None,
        }
    }

    /// Submits the evidence of `cycle`.
    pub async fn submit(
        &self,
        dispute_id: &str,
        cycle: i64,
        packet: &Value,
    ) -> Result<(), StepError> {
        let key = format!("dispute:{dispute_id}:cycle:{cycle}");
        self.post(dispute_id, "submissions", &key, packet).await
    }

    /// Tells the network the merchant concedes.
    pub async fn concede(&self, dispute_id: &str, reason: &str) -> Result<(), StepError> {
        let key = format!("dispute:{dispute_id}:concede");
        let body = serde_json::json!({ "reason": reason });
        self.post(dispute_id, "concessions", &key, &body).await
    }

    async fn post(
        &self,
        dispute_id: &str,
        what: &str,
        key: &str,
        body: &Value,
    ) -> Result<(), StepError> {
        match self {
            Network::Simulator(sim) => {
                let mut accepted = sim.accepted.lock().expect("simulator lock");
                if !accepted.iter().any(|(k, _)| k == key) {
                    accepted.push((key.to_owned(), body.clone()));
                }
                Ok(())
            }
            Network::Http { client, base } => {
                let mut url = base.clone();
                url.path_segments_mut()
                    .map_err(|_| {
                        StepError::fatal(format!("the network URL {base} cannot take a path"))
                    })?
                    .pop_if_empty()
                    .extend(["disputes", dispute_id, what]);
                let response = client
                    .post(url)
                    .header("Idempotency-Key", key)
                    .json(body)
                    .send()
                    .await
                    .map_err(|e| {
                        StepError::retryable(format!("the network did not answer: {e}"))
                    })?;
                let status = response.status();
                if status.is_success() {
                    return Ok(());
                }
                let text = response.text().await.unwrap_or_default();
                let reason: String = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v.get("reason")
                            .or(v.get("message"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .unwrap_or(text)
                    .chars()
                    .take(500)
                    .collect();
                if status.is_client_error() {
                    Err(StepError::fatal(format!(
                        "the network refused the {what} ({status}): {reason}"
                    )))
                } else {
                    Err(StepError::retryable(format!(
                        "the network failed ({status}): {reason}"
                    )))
                }
            }
        }
    }
}
