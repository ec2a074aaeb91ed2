//! The transition table a workflow declares ([`Definition`]): states, edges, signals,
//! retries, what happens on failure, and who may start it.

use super::*;

/// How a state may be left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// Straight to the next state.
    Next,
    /// Through a durable timer (a sleep, or a wait's timeout).
    Timer,
    /// When the named signal arrives.
    Signal,
    /// When the children started here are done.
    Children,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    pub to: &'static str,
    pub kind: EdgeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateDef {
    pub name: &'static str,
    pub edges: Vec<Edge>,
    /// Whether this state's step may complete the run.
    pub completes: bool,
    /// Whether this state's step may end the run by continuing as a new run.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub continues_as_new: bool,
    /// The capability a worker must advertise to run this state's step.
    pub capability: Option<&'static str>,
    /// Overrides the workflow's retry policy for this state (its compensation too).
    pub retry: Option<RetryPolicy>,
    /// Whether visits of this state are undone by [`Workflow::compensate`].
    pub compensates: bool,
}

impl StateDef {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            edges: Vec::new(),
            completes: false,
            continues_as_new: false,
            capability: None,
            retry: None,
            compensates: false,
        }
    }

    fn edge(mut self, to: &'static str, kind: EdgeKind, signal: Option<&'static str>) -> Self {
        self.edges.push(Edge { to, kind, signal });
        self
    }

    /// May go to `to` immediately.
    pub fn next(self, to: &'static str) -> Self {
        self.edge(to, EdgeKind::Next, None)
    }

    /// May go to `to` through a durable timer (a sleep or a wait's timeout).
    pub fn timer(self, to: &'static str) -> Self {
        self.edge(to, EdgeKind::Timer, None)
    }

    /// May wait for `signal` and then go to `to`.
    pub fn on_signal(self, signal: &'static str, to: &'static str) -> Self {
        self.edge(to, EdgeKind::Signal, Some(signal))
    }

    /// May start child runs and go to `to` when they are done.
    pub fn children(self, to: &'static str) -> Self {
        self.edge(to, EdgeKind::Children, None)
    }

    /// Visits of this state are undone by the workflow's `compensate` on failure,
    /// cancellation or abort.
    pub fn compensates(mut self) -> Self {
        self.compensates = true;
        self
    }

    pub fn completes(mut self) -> Self {
        self.completes = true;
        self
    }

    /// May end the run by starting a fresh one of the same workflow
    /// ([`Transition::ContinueAsNew`]), which keeps a long-lived process's history
    /// bounded.
    pub fn continues_as_new(mut self) -> Self {
        self.continues_as_new = true;
        self
    }

    pub fn capability(mut self, capability: &'static str) -> Self {
        self.capability = Some(capability);
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

/// A signal a workflow accepts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalDef {
    pub name: &'static str,
    /// Refused (a conflict) unless the run is waiting for it right now, instead of
    /// being queued for a later wait.
    pub only_while_waiting: bool,
}

/// What happens when a run fails after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Run the compensations of the visited states, newest first; the run ends
    /// `failed` for good.
    #[default]
    Compensate,
    /// No compensation: the run stays `failed` and an operator may retry it from there.
    Hold,
}

/// Who may start a workflow's runs, and how far its steps reach.
///
/// The API's generic start route, schedules and fan-outs accept only [`Access::Tenant`]
/// workflows from tenants' keys; the others are started by Waymark's own code paths,
/// which check what the generic route cannot (a slug reservation, a key's scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Any operator may start it in its own tenant; its steps act within that tenant.
    #[default]
    Tenant,
    /// Started only by Waymark itself (its own route, a key's rotation policy), in a
    /// tenant; its steps still act within that tenant only.
    Internal,
    /// Acts across tenants: started only by Waymark itself, always in the
    /// [`SYSTEM_TENANT`](crate::SYSTEM_TENANT), and the only kind whose steps get
    /// [`TenantScope::All`].
    System,
}

/// A workflow's whole transition table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definition {
    pub states: Vec<StateDef>,
    pub signals: Vec<SignalDef>,
    pub retry: RetryPolicy,
    pub on_failure: OnFailure,
    pub access: Access,
    /// Whether an admin key may also start this non-[`Access::Tenant`] workflow through
    /// the generic route and schedules (in its declared tenant).
    pub admin_may_start: bool,
    /// JSON pointers of fields in the input, state data and output that views redact
    /// (see [`super::sensitive`]).
    pub sensitive: Vec<&'static str>,
}

impl Definition {
    pub fn new(states: impl IntoIterator<Item = StateDef>) -> Self {
        Self {
            states: states.into_iter().collect(),
            signals: Vec::new(),
            retry: RetryPolicy::default(),
            on_failure: OnFailure::Compensate,
            access: Access::Tenant,
            admin_may_start: false,
            sensitive: Vec::new(),
        }
    }

    /// Marks fields sensitive: JSON pointers such as `/card/number` (`*` for every
    /// element) into the input, state data and output. Runs keep them; every view
    /// (the API's run answers, the dashboard) shows `"[redacted]"` instead.
    pub fn sensitive(mut self, pointers: impl IntoIterator<Item = &'static str>) -> Self {
        self.sensitive.extend(pointers);
        self
    }

    /// Redacts this workflow's sensitive fields in `value` (an input, state data or output).
    pub fn redact(&self, value: &mut Value) {
        super::sensitive::redact(value, &self.sensitive);
    }

    /// Declares who may start the workflow and how far its steps reach.
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Lets an admin key start this internal or system workflow by hand.
    pub fn admin_may_start(mut self) -> Self {
        self.admin_may_start = true;
        self
    }

    /// Whether a caller may start (or schedule) this workflow through the generic
    /// routes: tenants' keys only [`Access::Tenant`] ones, admins also those that
    /// allow it.
    pub fn startable_by(&self, admin: bool) -> bool {
        self.access == Access::Tenant || (admin && self.admin_may_start)
    }

    /// The data a step of a run in `tenant` may reach.
    pub fn step_scope(&self, tenant: &str) -> TenantScope {
        match self.access {
            Access::System => TenantScope::All,
            Access::Tenant | Access::Internal => TenantScope::Tenant(tenant.to_owned()),
        }
    }

    /// Declares a signal, queued until a state waits for it.
    pub fn signal(mut self, name: &'static str) -> Self {
        self.signals.push(SignalDef {
            name,
            only_while_waiting: false,
        });
        self
    }

    /// Declares a signal accepted only while the run waits for it.
    pub fn signal_only_while_waiting(mut self, name: &'static str) -> Self {
        self.signals.push(SignalDef {
            name,
            only_while_waiting: true,
        });
        self
    }

    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    pub fn signal_def(&self, name: &str) -> Option<&SignalDef> {
        self.signals.iter().find(|s| s.name == name)
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn state(&self, name: &str) -> Option<&StateDef> {
        self.states.iter().find(|s| s.name == name)
    }

    /// The state `name` with its data, as the store enters it: what the state needs
    /// (a capability, compensation) is copied into the [`Target`](crate::store::Target)
    /// so that a signal or a child can enter it later without the workflow's code.
    pub fn target(&self, name: &str, data: Value) -> crate::store::Target {
        let state = self.state(name);
        crate::store::Target {
            state: name.to_owned(),
            data,
            capability: state.and_then(|s| s.capability).map(str::to_owned),
            compensable: state.is_some_and(|s| s.compensates),
        }
    }

    /// The retry policy in force for `state`.
    pub fn retry_for(&self, state: &str) -> RetryPolicy {
        self.state(state)
            .and_then(|s| s.retry)
            .unwrap_or(self.retry)
    }

    /// Checks the table is self-consistent: names unique, every edge lands on a
    /// declared state. Registration refuses a workflow whose table is not.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for state in &self.states {
            if !seen.insert(state.name) {
                return Err(format!("state {:?} is declared twice", state.name));
            }
        }
        for state in &self.states {
            for edge in &state.edges {
                if !seen.contains(edge.to) {
                    return Err(format!(
                        "state {:?} has an edge to undeclared state {:?}",
                        state.name, edge.to
                    ));
                }
                if let Some(signal) = edge.signal {
                    if self.signal_def(signal).is_none() {
                        return Err(format!(
                            "state {:?} waits for undeclared signal {signal:?}",
                            state.name
                        ));
                    }
                }
            }
        }
        if self.states.is_empty() {
            return Err("a workflow needs at least one state".into());
        }
        for pointer in &self.sensitive {
            super::sensitive::check(pointer)?;
        }
        Ok(())
    }

    /// Whether `from` may go to `to` by `kind` (for signals, by that signal).
    pub fn allows(&self, from: &str, to: &str, kind: EdgeKind, signal: Option<&str>) -> bool {
        self.state(from).is_some_and(|s| {
            s.edges
                .iter()
                .any(|e| e.to == to && e.kind == kind && e.signal == signal)
        })
    }
}
