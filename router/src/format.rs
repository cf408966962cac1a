//! How `weft status`, its sub-views, `weft status --dot` and `weft ps`
//! render a router's state for a person (and for Graphviz). Shared by the
//! CLI and the status listener, so both show the same text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::core::status::RouterStatus;
use crate::shell::attach::AttachmentInfo;

/// The lists `weft status` can show on their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// Every peer known, with its route.
    Peers,
    /// Every connection of this router, with its data path.
    Connections,
    /// Every address this router dials, with its state.
    Targets,
}

impl View {
    fn title(self) -> &'static str {
        match self {
            View::Peers => "Peers",
            View::Connections => "Connections",
            View::Targets => "Targets",
        }
    }
}

/// `weft status`: the summary, then every connection, target and peer.
pub fn format_status(st: &RouterStatus) -> String {
    let mut out = format_summary(st);
    for view in [View::Connections, View::Targets, View::Peers] {
        let list = format_view(st, view);
        if !list.is_empty() {
            let _ = write!(out, "\n{}:\n{list}", view.title());
        }
    }
    out
}

/// The summary at the top of `weft status`, in the spirit of
/// `weave status`.
pub fn format_summary(st: &RouterStatus) -> String {
    let counts = st.connection_counts();
    let reachable = st
        .peers
        .iter()
        .filter(|p| p.reachable || p.is_local)
        .count();

    let mut out = String::new();
    let mut field = |key: &str, value: String| {
        let _ = writeln!(out, "{key:>15}: {value}");
    };
    field(
        "Version",
        format!(
            "{} (protocol {}..{})",
            st.version, st.protocol_min, st.protocol_max
        ),
    );
    field("Name", label(&st.name, Some(&st.nickname)));
    field("Encryption", st.encryption.mode.clone());
    field("Listen port", st.listen_port.to_string());
    field("Topology v.", st.topology_version.to_string());
    field(
        "Peer discovery",
        if st.discovery { "enabled" } else { "disabled" }.into(),
    );
    field("Targets", st.targets.len().to_string());
    let by_state: Vec<String> = counts
        .by_state()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let total: usize = counts.by_state().iter().map(|(_, n)| n).sum();
    field(
        "Connections",
        if by_state.is_empty() {
            total.to_string()
        } else {
            format!("{total} ({})", by_state.join(", "))
        },
    );
    field(
        "Peers",
        format!("{} ({reachable} reachable)", st.peers.len()),
    );
    if !st.exposed.is_empty() {
        field("Exposed", st.exposed.join(", "));
    }
    if !st.handshake_failures.is_empty() {
        let fails: Vec<String> = st
            .handshake_failures
            .iter()
            .map(|(why, n)| format!("{n} {}", why.replace('_', " ")))
            .collect();
        field("Handshake fails", fails.join(", "));
    }
    out
}

/// One list of `weft status` (`weft status peers` and so on): a line per
/// item, or nothing if there is none.
pub fn format_view(st: &RouterStatus, view: View) -> String {
    match view {
        View::Peers if !st.peers.is_empty() => peers_table(st),
        View::Connections if !st.connections.is_empty() => connections_table(st),
        View::Targets if !st.targets.is_empty() => targets_table(st),
        _ => String::new(),
    }
}

fn label(name: &str, nickname: Option<&str>) -> String {
    match nickname {
        Some(n) => format!("{name} ({n})"),
        None => name.to_owned(),
    }
}

fn connections_table(st: &RouterStatus) -> String {
    let rows: Vec<Vec<String>> = st
        .connections
        .iter()
        .map(|c| {
            let arrow = if c.direction == "outbound" {
                "->"
            } else {
                "<-"
            };
            let peer = match &c.peer {
                Some(p) => label(p, c.nickname.as_deref()),
                None => "-".into(),
            };
            let id = c
                .conn_id
                .as_ref()
                .map(|id| format!("conn {id}"))
                .unwrap_or_default();
            let data = match &c.data_path {
                Some(d) if d.usable && d.pmtu_verified => format!("udp ok, pmtu {}", d.pmtu),
                Some(d) if d.usable => format!("udp ok, pmtu {} (unverified)", d.pmtu),
                Some(_) => "udp down: data avoids this link".into(),
                None => String::new(),
            };
            let crypto = match c.encryption.as_deref() {
                Some("noise") => "encrypted".into(),
                Some(_) => "plaintext".into(),
                None => String::new(),
            };
            vec![
                arrow.into(),
                c.address.clone(),
                peer,
                c.state.clone(),
                crypto,
                data,
                id,
            ]
        })
        .collect();
    table(rows)
}

fn targets_table(st: &RouterStatus) -> String {
    let rows: Vec<Vec<String>> = st
        .targets
        .iter()
        .map(|t| {
            let mut detail = Vec::new();
            if t.failures > 0 {
                detail.push(format!(
                    "{} failure{}",
                    t.failures,
                    if t.failures == 1 { "" } else { "s" }
                ));
            }
            if let Some(e) = &t.last_error {
                detail.push(format!("last error: {e}"));
            }
            if let Some(s) = t.retry_in_secs {
                detail.push(format!("next try in {s}s"));
            }
            vec![
                t.address.clone(),
                t.origin.clone(),
                t.state.clone(),
                detail.join(", "),
            ]
        })
        .collect();
    table(rows)
}

fn peers_table(st: &RouterStatus) -> String {
    let nickname_of = |name: &str| {
        st.peers
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.nickname.as_str())
    };
    let rows: Vec<Vec<String>> = st
        .peers
        .iter()
        .map(|p| {
            let me = label(&p.name, Some(&p.nickname));
            let (state, route) = if p.is_local {
                ("self", String::new())
            } else if !p.reachable {
                ("unreachable", String::new())
            } else {
                let route = match (&p.next_hop, p.hops) {
                    (Some(hop), Some(hops)) if *hop != p.name => {
                        format!("via {}, {hops} hops", label(hop, nickname_of(hop)))
                    }
                    (Some(hop), None) if *hop != p.name => {
                        format!("via {}", label(hop, nickname_of(hop)))
                    }
                    _ => "direct".into(),
                };
                ("reachable", route)
            };
            vec![me, state.into(), route]
        })
        .collect();
    table(rows)
}

/// `weft status --dot`: the topology as a Graphviz graph. Peers are
/// nodes (this router filled, unreachable ones grey); each connection is
/// one edge, solid green when both ends report it established, dashed
/// orange otherwise; the edges from this router to its next hops are bold.
pub fn format_dot(st: &RouterStatus) -> String {
    let mut out = String::from("graph weft {\n  node [shape=ellipse];\n");
    for p in &st.peers {
        let style = if p.is_local {
            ", style=filled, fillcolor=\"#90caf9\""
        } else if !p.reachable {
            ", color=grey, fontcolor=grey"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}\\n{}\"{style}];",
            p.name,
            dot_escape(&p.nickname),
            p.name
        );
    }
    let mut claims: BTreeMap<(&str, &str), bool> = BTreeMap::new();
    for p in &st.peers {
        for c in &p.connections {
            claims.insert((p.name.as_str(), c.peer.as_str()), c.established);
        }
    }
    let next_hops: BTreeSet<&str> = st
        .peers
        .iter()
        .filter_map(|p| p.next_hop.as_deref())
        .collect();
    let mut seen = BTreeSet::new();
    for (&(a, b), &established) in &claims {
        let key = if a < b { (a, b) } else { (b, a) };
        if !seen.insert(key) {
            continue;
        }
        let both = established && claims.get(&(b, a)) == Some(&true);
        let style = if both {
            "color=\"#2e7d32\""
        } else {
            "color=\"#ef6c00\", style=dashed"
        };
        let on_route =
            (a == st.name && next_hops.contains(b)) || (b == st.name && next_hops.contains(a));
        let bold = if on_route { ", penwidth=3" } else { "" };
        let _ = writeln!(out, "  \"{}\" -- \"{}\" [{style}{bold}];", key.0, key.1);
    }
    out.push_str("}\n");
    out
}

/// Nicknames are plain words, but the graph must stay valid whatever a
/// peer calls itself.
fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `weft ps`: one line per attachment under a header.
pub fn format_ps(attachments: &[AttachmentInfo]) -> String {
    if attachments.is_empty() {
        return "no namespace is attached\n".into();
    }
    let mut rows = vec![vec![
        "ID".to_owned(),
        "NAMESPACE".into(),
        "INTERFACE".into(),
        "MAC".into(),
        "ADDRESSES".into(),
        "HOST END".into(),
        "STATE".into(),
    ]];
    rows.extend(attachments.iter().map(|a| {
        let addresses = if a.addresses.is_empty() {
            "-".into()
        } else {
            a.addresses.join(",")
        };
        vec![
            a.id.clone(),
            a.netns.label(),
            a.ifname.clone(),
            a.mac.clone().unwrap_or_else(|| "-".into()),
            addresses,
            a.host_ifname.clone(),
            a.state.clone(),
        ]
    }));
    table(rows)
}

/// Left-aligned columns two spaces apart, indented two spaces.
fn table(rows: Vec<Vec<String>>) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(" ");
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, " {cell:<width$} ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
