//! Transition coverage of the shipped workflows: every edge each one declares must
//! have been taken somewhere in the suite, or be on the allow-list below with the
//! reason no test can take it.
//!
//! The engine logs the edges runs take when `WAYMARK_EDGE_LOG` names a directory
//! (`waymark_engine::edge_log`). Cargo has no "after all tests" hook, so `./test.sh`
//! points that variable at a fresh directory for the whole suite and, when the suite ran
//! whole and passed, runs this ignored test on its own:
//!
//! ```sh
//! cargo test --test integration transition_coverage -- --ignored --exact
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use waymark_engine::edge_log::{TakenEdge, ENV};
use waymark_engine::workflow::EdgeKind;
use waymark_services::{BlobStore, LocalStore, MailConfig, Mailer, SmtpOptions, UrlSigner};

use crate::support::TestDb;

/// An edge no test takes, and why none can.
struct Allowed {
    workflow: &'static str,
    from: &'static str,
    kind: EdgeKind,
    signal: Option<&'static str>,
    to: &'static str,
    why: &'static str,
}

/// Edges the suite is allowed never to take. Each entry says why no test can: add one
/// only when the edge really is unreachable from a test, and prefer a test otherwise.
const ALLOWED: &[Allowed] = &[];

impl Allowed {
    fn edge(&self) -> TakenEdge {
        TakenEdge {
            workflow: self.workflow.to_owned(),
            from: self.from.to_owned(),
            kind: self.kind,
            signal: self.signal.map(str::to_owned),
            to: self.to.to_owned(),
        }
    }
}

/// Every edge every shipped workflow declares, built with throwaway dependencies (only
/// the definitions are read).
async fn declared() -> BTreeSet<TakenEdge> {
    let db = TestDb::sqlite().await;
    let data_dir = db.data_dir();
    let mailer = Mailer::from_config(
        &MailConfig {
            smtp_url: None,
            smtp: SmtpOptions {
                timeout: Duration::from_secs(5),
                pool_size: 1,
                ca_file: None,
            },
            outbox_dir: data_dir.join("outbox"),
            default_from: "Waymark <tests@waymark.example>".into(),
        },
        db.store.clone(),
    )
    .expect("mailer");
    let signer =
        UrlSigner::load_or_create(None, &data_dir.join("blob-signing.key")).expect("signer");
    let blobs = BlobStore::Local(
        LocalStore::new(data_dir.join("blobs"), signer, "http://127.0.0.1:1".into())
            .expect("blobs"),
    );
    let registry = waymark_workflows::registry(waymark_workflows::Deps {
        store: db.store.clone(),
        mailer,
        blobs,
        sealer: waymark_engine::keys::Sealer::random(),
        data_dir,
        tenant_retention: Duration::from_secs(86_400),
        rotation: Default::default(),
        dispute_network: waymark_workflows::disputes::network::Network::simulator(),
        disputes: Default::default(),
        meetings: Default::default(),
    })
    .expect("registry");
    let mut edges = BTreeSet::new();
    for workflow in registry.iter() {
        for state in &workflow.definition().states {
            for edge in &state.edges {
                edges.insert(TakenEdge {
                    workflow: workflow.name().to_owned(),
                    from: state.name.to_owned(),
                    kind: edge.kind,
                    signal: edge.signal.map(str::to_owned),
                    to: edge.to.to_owned(),
                });
            }
        }
    }
    edges
}

/// Every edge logged in `dir` by this suite's processes.
fn taken(dir: &std::path::Path) -> BTreeSet<TakenEdge> {
    let mut edges = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("log entry").path();
        let text = std::fs::read_to_string(&path).expect("edge log");
        edges.extend(text.lines().filter_map(TakenEdge::parse));
    }
    edges
}

#[tokio::test]
#[ignore = "reads the edge log of a whole suite run; ./test.sh runs it after the suite"]
async fn transition_coverage() {
    let dir = std::env::var_os(ENV).unwrap_or_else(|| {
        panic!("{ENV} is not set: run the whole suite with ./test.sh, which sets it and then runs this check")
    });
    let taken = taken(std::path::Path::new(&dir));
    assert!(
        !taken.is_empty(),
        "no edge was logged in {dir:?}: did the suite run with {ENV} set?"
    );
    let declared = declared().await;

    let mut problems = Vec::new();
    for allowed in ALLOWED {
        let edge = allowed.edge();
        assert!(!allowed.why.is_empty(), "{edge}: say why it is allowed");
        if !declared.contains(&edge) {
            problems.push(format!("allow-listed but not declared (remove it): {edge}"));
        } else if taken.contains(&edge) {
            problems.push(format!("allow-listed but taken (remove it): {edge}"));
        }
    }
    let allowed: BTreeSet<TakenEdge> = ALLOWED.iter().map(Allowed::edge).collect();
    for edge in declared.difference(&taken) {
        if !allowed.contains(edge) {
            problems.push(format!("never taken: {edge}"));
        }
    }
    if !problems.is_empty() {
        panic!(
            "transition coverage of the shipped workflows is incomplete ({} of {} declared edges taken):\n  {}\n\
             Add a test that takes each edge, or allow-list it in tests/coverage.rs with the reason no test can.",
            declared.intersection(&taken).count(),
            declared.len(),
            problems.join("\n  ")
        );
    }
}
