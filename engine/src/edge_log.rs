//! Transition coverage: which declared edges the running engine actually takes.
//!
//! Off unless `WAYMARK_EDGE_LOG=<dir>` is set, in which case every edge taken (a step's
//! next state or sleep, a fan-out, a signal consumed by a wait, a wait's timeout) is
//! appended as one line to `<dir>/<pid>.log`. `./test.sh` sets it for the whole suite
//! (the `waymark` processes tests spawn inherit it), then checks that every edge of
//! every shipped workflow appears somewhere in the directory. The lines are written
//! where the edge is decided, which for signals and timeouts is inside a transaction:
//! an edge whose transaction then rolls back still counts, which is fine for coverage.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

use crate::workflow::EdgeKind;

/// The variable naming the directory the edge log is written to.
pub const ENV: &str = "WAYMARK_EDGE_LOG";

/// One edge of one workflow, as the log and the coverage check spell it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TakenEdge {
    pub workflow: String,
    pub from: String,
    pub kind: EdgeKind,
    pub signal: Option<String>,
    pub to: String,
}

impl TakenEdge {
    fn kind_word(kind: EdgeKind) -> &'static str {
        match kind {
            EdgeKind::Next => "next",
            EdgeKind::Timer => "timer",
            EdgeKind::Signal => "signal",
            EdgeKind::Children => "children",
        }
    }

    /// One tab-separated line: workflow, from, kind, signal (or `-`), to.
    pub fn line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}",
            self.workflow,
            self.from,
            Self::kind_word(self.kind),
            self.signal.as_deref().unwrap_or("-"),
            self.to
        )
    }

    /// Reads back a [`TakenEdge::line`]; `None` for anything else (a torn last line of a
    /// killed process, say).
    pub fn parse(line: &str) -> Option<TakenEdge> {
        let mut fields = line.split('\t');
        let (workflow, from, kind, signal, to) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        if fields.next().is_some() {
            return None;
        }
        let kind = [
            EdgeKind::Next,
            EdgeKind::Timer,
            EdgeKind::Signal,
            EdgeKind::Children,
        ]
        .into_iter()
        .find(|k| Self::kind_word(*k) == kind)?;
        Some(TakenEdge {
            workflow: workflow.to_owned(),
            from: from.to_owned(),
            kind,
            signal: (signal != "-").then(|| signal.to_owned()),
            to: to.to_owned(),
        })
    }
}

impl std::fmt::Display for TakenEdge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} --{}",
            self.workflow,
            self.from,
            Self::kind_word(self.kind)
        )?;
        if let Some(signal) = &self.signal {
            write!(f, "({signal})")?;
        }
        write!(f, "--> {}", self.to)
    }
}

/// The open log file, or `None` when logging is off; decided once per process.
fn log() -> Option<&'static Mutex<std::fs::File>> {
    static LOG: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let dir = std::env::var_os(ENV)?;
        let path = std::path::Path::new(&dir).join(format!("{}.log", std::process::id()));
        // Coverage is a testing aid: a log that cannot be opened must not stop the engine.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
            .map(Mutex::new)
    })
    .as_ref()
}

/// Records that a run of `workflow` left `from` by `kind` (for signals, `signal`) to
/// `to`. Costs one check of a static when logging is off.
pub fn taken(workflow: &str, from: &str, kind: EdgeKind, signal: Option<&str>, to: &str) {
    let Some(log) = log() else { return };
    let mut line = TakenEdge {
        workflow: workflow.to_owned(),
        from: from.to_owned(),
        kind,
        signal: signal.map(str::to_owned),
        to: to.to_owned(),
    }
    .line();
    line.push('\n');
    // One write per line on a file opened for appending: lines from the threads of one
    // process (the mutex) and from other processes (own files) never interleave.
    if let Ok(mut file) = log.lock() {
        let _ = file.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_reads_back_as_the_edge_it_was_written_from() {
        for (kind, signal) in [
            (EdgeKind::Next, None),
            (EdgeKind::Timer, None),
            (EdgeKind::Signal, Some("approve".to_owned())),
            (EdgeKind::Children, None),
        ] {
            let edge = TakenEdge {
                workflow: "w".into(),
                from: "a".into(),
                kind,
                signal,
                to: "b".into(),
            };
            assert_eq!(TakenEdge::parse(&edge.line()), Some(edge));
        }
        assert_eq!(TakenEdge::parse("w\ta\tnext\t-"), None, "a torn line");
        assert_eq!(
            TakenEdge::parse("w\ta\tjump\t-\tb"),
            None,
            "an unknown kind"
        );
    }
}
