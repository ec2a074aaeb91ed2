//! Draws a workflow's transition table as SVG: states in rows by their distance from
//! the initial state, edges as arrows labelled by how they are taken. Plain, dependency
//! free and deterministic, so the same definition always gives the same picture.
//! [`svg_with_path`] draws one run on it: the edges it took, each labelled with how
//! often, the states it visited, and the state it is in now.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use waymark_engine::workflow::{Definition, EdgeKind};

const BOX_W: i32 = 170;
const BOX_H: i32 = 40;
const GAP_X: i32 = 60;
const GAP_Y: i32 = 90;
const MARGIN: i32 = 40;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One run's way through its workflow, for [`svg_with_path`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPath {
    /// (from, to) → how many times the run took that edge.
    pub taken: BTreeMap<(String, String), u32>,
    pub visited: BTreeSet<String>,
    /// The state the run is in (or ended in).
    pub current: Option<String>,
}

impl RunPath {
    /// The path a run's history (oldest first) records: every change of state, and
    /// every new visit of the same state (a loop); a retry of one visit is no edge.
    pub fn from_history(history: &[waymark_engine::store::HistoryEntry], current: &str) -> Self {
        let mut path = RunPath {
            current: Some(current.to_owned()),
            ..RunPath::default()
        };
        let mut last_visit = None;
        for entry in history {
            path.visited.insert(entry.to_state.clone());
            if let Some(from) = &entry.from_state {
                if *from != entry.to_state || last_visit != Some(entry.visit) {
                    *path
                        .taken
                        .entry((from.clone(), entry.to_state.clone()))
                        .or_default() += 1;
                }
            }
            last_visit = Some(entry.visit);
        }
        path
    }
}

/// The SVG document for `definition`.
pub fn svg(name: &str, definition: &Definition) -> String {
    svg_with_path(name, definition, None)
}

/// The SVG document for `definition` with `path` drawn on it: taken edges thick and
/// labelled `×n`, visited states shaded, the current state outlined.
pub fn svg_with_path(name: &str, definition: &Definition, path: Option<&RunPath>) -> String {
    // Rank by breadth-first distance from the first (initial) state; unreachable
    // states go in a last row so nothing declared is hidden.
    let mut rank: BTreeMap<&str, usize> = BTreeMap::new();
    if let Some(first) = definition.states.first() {
        rank.insert(first.name, 0);
        let mut frontier = vec![first.name];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for state in frontier {
                let depth = rank[state];
                for edge in definition
                    .state(state)
                    .map(|s| s.edges.as_slice())
                    .unwrap_or_default()
                {
                    if !rank.contains_key(edge.to) {
                        rank.insert(edge.to, depth + 1);
                        next.push(edge.to);
                    }
                }
            }
            frontier = next;
        }
    }
    let last = rank.values().copied().max().map_or(0, |m| m + 1);
    let mut rows: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for state in &definition.states {
        rows.entry(*rank.get(state.name).unwrap_or(&last))
            .or_default()
            .push(state.name);
    }
    let widest = rows.values().map(Vec::len).max().unwrap_or(1) as i32;
    let width = MARGIN * 2 + widest * BOX_W + (widest - 1).max(0) * GAP_X;
    let height = MARGIN * 2 + 30 + rows.len() as i32 * (BOX_H + GAP_Y);
    let mut position: BTreeMap<&str, (i32, i32)> = BTreeMap::new();
    for (row_index, (_, states)) in rows.iter().enumerate() {
        let row_width = states.len() as i32 * BOX_W + (states.len() as i32 - 1) * GAP_X;
        let x0 = (width - row_width) / 2;
        for (i, state) in states.iter().enumerate() {
            position.insert(
                state,
                (
                    x0 + i as i32 * (BOX_W + GAP_X),
                    MARGIN + 30 + row_index as i32 * (BOX_H + GAP_Y),
                ),
            );
        }
    }
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker>{taken_marker}</defs>
<title>{title}</title>
<text x="{MARGIN}" y="{ty}" font-size="16" font-weight="bold">{title}</text>
"##,
        title = escape(name),
        ty = MARGIN,
        taken_marker = if path.is_some() {
            r##"<marker id="arrow-taken" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="5" markerHeight="5" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#1a5fd0"/></marker>"##
        } else {
            ""
        },
    );
    for state in &definition.states {
        let (x, y) = position[state.name];
        for edge in &state.edges {
            let (tx, ty) = position[edge.to];
            let times = path
                .and_then(|p| p.taken.get(&(state.name.to_owned(), edge.to.to_owned())))
                .copied();
            let mut label = match (edge.kind, edge.signal) {
                (EdgeKind::Next, _) => String::new(),
                (EdgeKind::Timer, _) => "timer".to_owned(),
                (EdgeKind::Signal, Some(signal)) => format!("signal {signal}"),
                (EdgeKind::Signal, None) => "signal".to_owned(),
                (EdgeKind::Children, _) => "children done".to_owned(),
            };
            if let Some(n) = times {
                label = if label.is_empty() {
                    format!("×{n}")
                } else {
                    format!("{label} ×{n}")
                };
            }
            let (stroke, marker, class) = match times {
                Some(_) => (
                    r##"stroke="#1a5fd0" stroke-width="3""##,
                    "arrow-taken",
                    r#" class="taken""#,
                ),
                None => (r##"stroke="#444""##, "arrow", ""),
            };
            let dash = if edge.kind == EdgeKind::Next {
                ""
            } else {
                r#" stroke-dasharray="5,3""#
            };
            let (x1, y1, x2, y2) = if edge.to == state.name {
                (x + BOX_W, y + BOX_H / 2, x + BOX_W, y + BOX_H / 2 + 1)
            } else if ty > y {
                (x + BOX_W / 2, y + BOX_H, tx + BOX_W / 2, ty)
            } else {
                (x + BOX_W / 2, y, tx + BOX_W / 2, ty + BOX_H)
            };
            let _ = writeln!(
                out,
                r##"<path{class} d="M{x1},{y1} C{x1},{cy1} {x2},{cy2} {x2},{y2}" fill="none" {stroke}{dash} marker-end="url(#{marker})"><title>{from} → {to} {label}</title></path>"##,
                cy1 = (y1 + y2) / 2,
                cy2 = (y1 + y2) / 2,
                from = escape(state.name),
                to = escape(edge.to),
                label = escape(&label),
            );
            if !label.is_empty() {
                let _ = writeln!(
                    out,
                    r##"<text x="{lx}" y="{ly}" fill="#555" font-size="11" text-anchor="middle">{label}</text>"##,
                    lx = (x1 + x2) / 2 + 6,
                    ly = (y1 + y2) / 2,
                    label = escape(&label),
                );
            }
        }
    }
    for state in &definition.states {
        let (x, y) = position[state.name];
        let visited = path.is_some_and(|p| p.visited.contains(state.name));
        let current = path.is_some_and(|p| p.current.as_deref() == Some(state.name));
        let fill = if visited {
            "#cfe0fc"
        } else if state.completes {
            "#e6f4ea"
        } else {
            "#eef2fb"
        };
        let stroke = if current {
            r##" stroke="#c25e00" stroke-width="4""##
        } else if state.compensates {
            r##" stroke="#b3261e" stroke-width="2""##
        } else {
            r##" stroke="#333""##
        };
        let group = if current {
            r#"<g class="current"><title>current state</title>"#
        } else if visited {
            r#"<g class="visited">"#
        } else {
            "<g>"
        };
        let mut notes = Vec::new();
        if state.compensates {
            notes.push("compensates".to_owned());
        }
        if let Some(capability) = state.capability {
            notes.push(format!("needs {capability}"));
        }
        if state.completes {
            notes.push("completes".to_owned());
        }
        if state.continues_as_new {
            notes.push("continues as new".to_owned());
        }
        let _ = writeln!(
            out,
            r##"{group}<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{fill}"{stroke}/><text x="{cx}" y="{ny}" text-anchor="middle" font-weight="bold">{name}</text><text x="{cx}" y="{sy}" text-anchor="middle" font-size="10" fill="#555">{notes}</text></g>"##,
            cx = x + BOX_W / 2,
            ny = y + 17,
            sy = y + 32,
            name = escape(state.name),
            notes = escape(&notes.join(" · ")),
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use waymark_engine::workflow::StateDef;

    use super::*;

    #[test]
    fn draws_every_state_and_edge_with_its_label() {
        let definition = Definition::new([
            StateDef::new("start").next("wait").compensates(),
            StateDef::new("wait")
                .on_signal("go", "done")
                .timer("expired"),
            StateDef::new("done").completes(),
            StateDef::new("expired").completes(),
            StateDef::new("orphan").completes(),
        ])
        .signal("go");
        let svg = svg("a<b", &definition);
        for name in ["start", "wait", "done", "expired", "orphan"] {
            assert!(svg.contains(&format!(">{name}</text>")), "{name} missing");
        }
        assert!(
            svg.contains("signal go") && svg.contains(">timer<") && svg.contains("compensates")
        );
        assert!(svg.contains("a&lt;b"), "names are escaped");
        assert_eq!(svg.matches("marker-end=").count(), 3, "one arrow per edge");
        assert_eq!(svg, super::svg("a<b", &definition), "deterministic");
    }

    #[test]
    fn a_runs_path_marks_taken_edges_with_counts_and_the_current_state() {
        let definition = Definition::new([
            StateDef::new("start").next("check"),
            StateDef::new("check").next("check").next("done"),
            StateDef::new("done").completes(),
        ]);
        let mut path = RunPath {
            current: Some("check".into()),
            ..RunPath::default()
        };
        path.taken.insert(("start".into(), "check".into()), 1);
        path.taken.insert(("check".into(), "check".into()), 2);
        path.visited
            .extend(["start".to_owned(), "check".to_owned()]);
        let svg = svg_with_path("w", &definition, Some(&path));
        assert_eq!(svg.matches(r#"class="taken""#).count(), 2);
        assert!(svg.contains(">×1<") && svg.contains(">×2<"));
        assert_eq!(svg.matches(r#"class="current""#).count(), 1);
        assert!(svg.contains(r#"<g class="current"><title>current state</title><rect"#));
        assert_eq!(svg.matches(r#"class="visited""#).count(), 1, "start only");
    }
}
