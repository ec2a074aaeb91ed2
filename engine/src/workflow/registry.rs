//! Type erasure: the runner and the API handle workflows as JSON through
//! [`ErasedWorkflow`], and a process knows its workflows through the [`Registry`].

use super::*;

/// A transition with its state serialised, as the engine persists it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTransition {
    Next {
        state: String,
        data: Value,
    },
    Sleep {
        state: String,
        data: Value,
        wake: Wake,
    },
    Wait {
        /// (signal, state, data)
        on: Vec<(String, String, Value)>,
        timeout: Option<(Wake, String, Value)>,
    },
    FanOut {
        children: Vec<ChildSpec>,
        then: (String, Value),
        policy: FanOutPolicy,
    },
    Complete {
        output: Value,
    },
    Abort {
        reason: String,
    },
    ContinueAsNew {
        state: String,
        data: Value,
    },
}

/// Decodes `value`, naming the path of the first field that does not fit
/// (`items[2].qty: invalid type…`), so an API answer can say which field is wrong.
pub fn decode_with_path<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

/// Decodes a delivered signal into a signal enum: the name picks the variant.
pub fn decode_signal<T: DeserializeOwned>(name: &str, payload: &Value) -> Result<T, DecodeError> {
    let tagged = serde_json::json!({ "signal": name, "payload": payload });
    decode_with_path::<T>(tagged)
        .or_else(|first| {
            // A variant without data takes no payload: accept an absent, null or empty one.
            let empty = payload.is_null() || payload.as_object().is_some_and(|m| m.is_empty());
            if empty {
                decode_with_path::<T>(serde_json::json!({ "signal": name })).map_err(|_| first)
            } else {
                Err(first)
            }
        })
        .map_err(|message| DecodeError {
            what: "signal payload",
            message,
        })
}

/// Why a JSON document did not fit a workflow's types.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} does not match the workflow's type: {message}")]
pub struct DecodeError {
    pub what: &'static str,
    pub message: String,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A registered workflow, seen through JSON.
pub trait ErasedWorkflow: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn definition(&self) -> &Definition;
    /// Checks `input` against the input type and returns the initial state.
    fn initial_state(&self, input: &Value) -> Result<(String, Value), DecodeError>;
    /// Checks a signal's payload against its variant.
    fn check_signal(&self, name: &str, payload: &Value) -> Result<(), DecodeError>;
    /// Brings `value`, persisted under version `from`, to the current version.
    fn upcast(&self, kind: Persisted, from: u32, value: Value) -> Result<Value, DecodeError>;
    fn step<'a>(
        &'a self,
        ctx: &'a StepContext,
        input: &'a Value,
        state: &'a Value,
    ) -> BoxFuture<'a, Result<RawTransition, StepError>>;
    fn compensate<'a>(
        &'a self,
        ctx: &'a StepContext,
        input: &'a Value,
        state: &'a Value,
    ) -> BoxFuture<'a, Result<(), StepError>>;
}

pub(super) struct Erased<W: Workflow> {
    workflow: W,
    definition: Definition,
}

pub(super) fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Value, StepError> {
    serde_json::to_value(value).map_err(|e| StepError::fatal(format!("cannot encode {what}: {e}")))
}

impl<W: Workflow> ErasedWorkflow for Erased<W> {
    fn name(&self) -> &'static str {
        W::NAME
    }

    fn version(&self) -> u32 {
        W::VERSION
    }

    fn definition(&self) -> &Definition {
        &self.definition
    }

    fn initial_state(&self, input: &Value) -> Result<(String, Value), DecodeError> {
        let typed: W::Input = decode_with_path(input.clone()).map_err(|message| DecodeError {
            what: "input",
            message,
        })?;
        let state = W::initial_state(&typed);
        let data = serde_json::to_value(&state).map_err(|e| DecodeError {
            what: "initial state",
            message: e.to_string(),
        })?;
        Ok((state.name().to_owned(), data))
    }

    fn check_signal(&self, name: &str, payload: &Value) -> Result<(), DecodeError> {
        decode_signal::<W::Signal>(name, payload).map(|_| ())
    }

    fn upcast(&self, kind: Persisted, from: u32, mut value: Value) -> Result<Value, DecodeError> {
        let mut version = from;
        while version < W::VERSION {
            value = W::upcast(kind, version, value).map_err(|message| DecodeError {
                what: "persisted data",
                message: format!("upcasting {kind:?} from version {version}: {message}"),
            })?;
            version += 1;
        }
        Ok(value)
    }

    fn compensate<'a>(
        &'a self,
        ctx: &'a StepContext,
        input: &'a Value,
        state: &'a Value,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            let input: W::Input = serde_json::from_value(input.clone())
                .map_err(|e| StepError::fatal(format!("stored input does not decode: {e}")))?;
            let state: W::State = serde_json::from_value(state.clone())
                .map_err(|e| StepError::fatal(format!("stored state does not decode: {e}")))?;
            self.workflow.compensate(ctx, &input, state).await
        })
    }

    fn step<'a>(
        &'a self,
        ctx: &'a StepContext,
        input: &'a Value,
        state: &'a Value,
    ) -> BoxFuture<'a, Result<RawTransition, StepError>> {
        Box::pin(async move {
            // A checkpoint that no longer decodes cannot be fixed by retrying.
            let input: W::Input = serde_json::from_value(input.clone())
                .map_err(|e| StepError::fatal(format!("stored input does not decode: {e}")))?;
            let state: W::State = serde_json::from_value(state.clone())
                .map_err(|e| StepError::fatal(format!("stored state does not decode: {e}")))?;
            let transition = self.workflow.step(ctx, &input, state).await?;
            Ok(match transition {
                Transition::Next(next) => RawTransition::Next {
                    state: next.name().to_owned(),
                    data: encode(&next, "state")?,
                },
                Transition::Sleep { next, wake } => RawTransition::Sleep {
                    state: next.name().to_owned(),
                    data: encode(&next, "state")?,
                    wake,
                },
                Transition::Wait(wait) => RawTransition::Wait {
                    on: wait
                        .on
                        .into_iter()
                        .map(|(signal, state)| {
                            Ok((
                                signal.to_owned(),
                                state.name().to_owned(),
                                encode(&state, "state")?,
                            ))
                        })
                        .collect::<Result<_, StepError>>()?,
                    timeout: match wait.timeout {
                        Some((wake, state)) => {
                            Some((wake, state.name().to_owned(), encode(&state, "state")?))
                        }
                        None => None,
                    },
                },
                Transition::FanOut(fan_out) => RawTransition::FanOut {
                    children: fan_out.children,
                    then: (
                        fan_out.then.name().to_owned(),
                        encode(&fan_out.then, "state")?,
                    ),
                    policy: fan_out.policy,
                },
                Transition::Complete(output) => RawTransition::Complete {
                    output: encode(&output, "output")?,
                },
                Transition::Abort(reason) => RawTransition::Abort { reason },
                Transition::ContinueAsNew(next) => RawTransition::ContinueAsNew {
                    state: next.name().to_owned(),
                    data: encode(&next, "state")?,
                },
            })
        })
    }
}

/// The workflow types a process knows.
#[derive(Clone, Default)]
pub struct Registry {
    workflows: BTreeMap<&'static str, Arc<dyn ErasedWorkflow>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.workflows.keys()).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("workflow {0:?} is registered twice")]
    Duplicate(&'static str),
    #[error("workflow {name:?} has an invalid transition table: {reason}")]
    InvalidDefinition { name: &'static str, reason: String },
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register<W: Workflow>(&mut self, workflow: W) -> Result<&mut Self, RegistryError> {
        let definition = W::definition();
        definition
            .validate()
            .map_err(|reason| RegistryError::InvalidDefinition {
                name: W::NAME,
                reason,
            })?;
        if self.workflows.contains_key(W::NAME) {
            return Err(RegistryError::Duplicate(W::NAME));
        }
        self.workflows.insert(
            W::NAME,
            Arc::new(Erased {
                workflow,
                definition,
            }),
        );
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn ErasedWorkflow>> {
        self.workflows.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn ErasedWorkflow>> {
        self.workflows.values()
    }

    /// (name, version) of every workflow, as workers advertise and claim them.
    pub fn known(&self) -> Vec<(String, u32)> {
        self.workflows
            .values()
            .map(|w| (w.name().to_owned(), w.version()))
            .collect()
    }
}
