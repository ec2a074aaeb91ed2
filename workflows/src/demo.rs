//! `demo`: the smallest useful workflow, for a first look at Waymark.
//!
//! ```text
//! work ──next──▶ greet ──▶ (completed)
//!   └───timer───▶ greet
//! ```
//! `work` simulates a slow step (`work`, reporting progress), then goes to `greet`
//! either at once or through a durable timer (`wait`). `greet` completes with a
//! greeting.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use waymark_engine::{
    Definition, NoSignal, StateDef, StepContext, StepError, Transition, Workflow, WorkflowState,
};

pub struct Demo;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoInput {
    pub name: String,
    /// How long the `work` step takes (e.g. `"2s"`).
    #[serde(
        default,
        with = "crate::duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub work: Option<Duration>,
    /// A durable timer between `work` and `greet` (e.g. `"7d"`).
    #[serde(
        default,
        with = "crate::duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub wait: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DemoState {
    Work,
    Greet,
}

impl WorkflowState for DemoState {
    fn name(&self) -> &'static str {
        match self {
            DemoState::Work => "work",
            DemoState::Greet => "greet",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoOutput {
    pub greeting: String,
}

impl Workflow for Demo {
    const NAME: &'static str = "demo";
    type Input = DemoInput;
    type State = DemoState;
    type Output = DemoOutput;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("work").next("greet").timer("greet"),
            StateDef::new("greet").completes(),
        ])
    }

    fn initial_state(_input: &DemoInput) -> DemoState {
        DemoState::Work
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &DemoInput,
        state: DemoState,
    ) -> Result<Transition<DemoState, DemoOutput>, StepError> {
        match state {
            DemoState::Work => {
                if let Some(work) = input.work {
                    ctx.progress(0.0, "working").await?;
                    tokio::select! {
                        _ = tokio::time::sleep(work) => {}
                        _ = ctx.cancel.cancelled() => return Err(StepError::retryable("cancelled")),
                    }
                    ctx.progress(1.0, "done").await?;
                }
                Ok(match input.wait {
                    Some(wait) => Transition::sleep_for(DemoState::Greet, wait),
                    None => Transition::next(DemoState::Greet),
                })
            }
            DemoState::Greet => Ok(Transition::complete(DemoOutput {
                greeting: format!("Hello, {}!", input.name),
            })),
        }
    }
}
