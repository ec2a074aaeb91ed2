//! What a step sees ([`StepContext`]): its run, visit and attempt, the signal or
//! children's results that led here, its tenant scope, and where its progress goes.

use super::*;

/// Everything a step may know about the run it serves.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub run_id: Uuid,
    pub tenant: String,
    pub workflow: &'static str,
    pub state: String,
    /// Which visit of a state this is; part of the idempotency key.
    pub visit: i64,
    /// Which attempt of this visit (1 = first). For logs only: never build keys on it.
    pub attempt: i32,
    /// Fires when the run is cancelled or its lease is lost; a step should stop soon.
    pub cancel: CancellationToken,
    pub clock: SharedClock,
    /// What this visit received: the signal that led here, or the children's results.
    pub received: Option<Received>,
    /// True while running a compensation; keys then differ from the forward step's.
    pub compensating: bool,
    /// What data the step may reach: its run's tenant, unless its workflow is declared
    /// [`Access::System`]. Private so a step cannot widen it.
    scope: TenantScope,
    progress: Option<Arc<dyn ProgressSink>>,
}

/// A signal as the step that follows it sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedSignal {
    pub id: Uuid,
    pub name: String,
    pub payload: Value,
    pub actor: String,
    /// The workflow version whose signal type the payload was written for.
    #[serde(default = "first_version")]
    pub version: u32,
}

pub(super) fn first_version() -> u32 {
    1
}

/// One child's end, as the state after a fan-out sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildResult {
    pub index: u32,
    pub run_id: Uuid,
    pub workflow: String,
    pub status: crate::status::RunStatus,
    pub output: Option<Value>,
    pub error: Option<StepError>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Signal(ReceivedSignal),
    Children(Vec<ChildResult>),
}

/// Where a step's progress goes. The runner's sink writes it on the run, fenced by the
/// lease (a lost lease is an error); a trait, so the workflow model does not depend on
/// the store that persists it.
pub trait ProgressSink: Send + Sync + std::fmt::Debug {
    /// Records `fraction` (0.0..=1.0) and `message` on the run's status.
    fn report<'a>(
        &'a self,
        fraction: f32,
        message: &'a str,
    ) -> BoxFuture<'a, Result<(), StepError>>;
}

impl StepContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        run_id: Uuid,
        tenant: String,
        workflow: &'static str,
        state: String,
        visit: i64,
        attempt: i32,
        cancel: CancellationToken,
        clock: SharedClock,
    ) -> Self {
        Self {
            run_id,
            scope: TenantScope::Tenant(tenant.clone()),
            tenant,
            workflow,
            state,
            visit,
            attempt,
            cancel,
            clock,
            received: None,
            compensating: false,
            progress: None,
        }
    }

    /// Grants the step the scope its workflow's definition declares (the runner calls
    /// this; without it a step sees its own tenant only).
    pub fn with_access(mut self, definition: &Definition) -> Self {
        self.scope = definition.step_scope(&self.tenant);
        self
    }

    /// The tenants whose data this step may read and write: pass it to every store
    /// call that takes a [`TenantScope`].
    pub fn scope(&self) -> &TenantScope {
        &self.scope
    }

    pub fn with_received(mut self, received: Option<Received>) -> Self {
        self.received = received;
        self
    }

    pub fn for_compensation(mut self) -> Self {
        self.compensating = true;
        self
    }

    /// The signal that led to this state, decoded as the workflow's signal type.
    pub fn signal<T: DeserializeOwned>(&self) -> Result<Option<T>, StepError> {
        match &self.received {
            Some(Received::Signal(s)) => decode_signal::<T>(&s.name, &s.payload)
                .map(Some)
                .map_err(|e| StepError::fatal(e.to_string())),
            _ => Ok(None),
        }
    }

    /// The signal that led to this state, as delivered.
    pub fn received_signal(&self) -> Option<&ReceivedSignal> {
        match &self.received {
            Some(Received::Signal(s)) => Some(s),
            _ => None,
        }
    }

    /// The children's results (ordered by child index) after a fan-out.
    pub fn children(&self) -> &[ChildResult] {
        match &self.received {
            Some(Received::Children(c)) => c,
            _ => &[],
        }
    }

    /// Where [`StepContext::progress`] reports (the runner's sink writes through the
    /// run's lease).
    pub fn with_progress(mut self, sink: Arc<dyn ProgressSink>) -> Self {
        self.progress = Some(sink);
        self
    }

    /// The key for the `call`-th side effect of this visit: the same on every retry
    /// of the visit, different on the next visit of the same state.
    pub fn idempotency_key(&self, call: u32) -> String {
        if self.compensating {
            format!("{}:{}:c{}", self.run_id, self.visit, call)
        } else {
            format!("{}:{}:{}", self.run_id, self.visit, call)
        }
    }

    /// Reports progress (a fraction 0.0..=1.0 and a message) on the run's status.
    /// Fenced by the lease: a lost lease is an error.
    pub async fn progress(&self, fraction: f32, message: &str) -> Result<(), StepError> {
        match &self.progress {
            Some(sink) => sink.report(fraction.clamp(0.0, 1.0), message).await,
            None => Ok(()),
        }
    }
}
