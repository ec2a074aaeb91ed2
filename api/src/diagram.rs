//! Draws a workflow's transition table as SVG: states in rows by their distance from
//! the initial state, edges as arrows labelled by how they are taken. Plain, dependency
//! free and deterministic, so the same definition always gives the same picture.

use std::collections::BTreeMap;
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

/// The SVG document for `definition`.
pub fn svg(name: &str, definition: &Definition) -> String {
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
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>
<title>{title}</title>
<text x="{MARGIN}" y="{ty}" font-size="16" font-weight="bold">{title}</text>
"##,
        title = escape(name),
        ty = MARGIN,
    );
    for state in &definition.states {
        let (x, y) = position[state.name];
        for edge in &state.edges {
            let (tx, ty) = position[edge.to];
            let label = match (edge.kind, edge.signal) {
                (EdgeKind::Next, _) => String::new(),
                (EdgeKind::Timer, _) => "timer".to_owned(),
                (EdgeKind::Signal, Some(signal)) => format!("signal {signal}"),
                (EdgeKind::Signal, None) => "signal".to_owned(),
                (EdgeKind::Children, _) => "children done".to_owned(),
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
                r##"<path d="M{x1},{y1} C{x1},{cy1} {x2},{cy2} {x2},{y2}" fill="none" stroke="#444"{dash} marker-end="url(#arrow)"><title>{from} → {to} {label}</title></path>"##,
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
        let fill = if state.completes {
            "#e6f4ea"
        } else {
            "#eef2fb"
        };
        let stroke = if state.compensates {
            r##" stroke="#b3261e" stroke-width="2""##
        } else {
            r##" stroke="#333""##
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
        let _ = writeln!(
            out,
            r##"<g><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{fill}"{stroke}/><text x="{cx}" y="{ny}" text-anchor="middle" font-weight="bold">{name}</text><text x="{cx}" y="{sy}" text-anchor="middle" font-size="10" fill="#555">{notes}</text></g>"##,
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
}
