//! Prometheus / OpenMetrics exposition of a [`RouterStatus`], served at
//! `GET /metrics` on the status listener.
//!
//! Every scrape builds a fresh registry from one status snapshot: the
//! router task stays the only owner of its counters, and a metric can
//! never disagree with `weft report` taken at the same moment. Counters
//! carry totals since the router started. `docs/api.md` lists the
//! families.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::core::status::RouterStatus;

/// The content type of [`encode_status`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The metrics of `status` in the OpenMetrics text format.
pub fn encode_status(status: &RouterStatus) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("weft");

    let info = gauge_family(
        &mut registry,
        "router_info",
        "This router: name, nickname, version and encryption mode (always 1)",
    );
    info.get_or_create(&vec![
        ("name", status.name.clone()),
        ("nickname", status.nickname.clone()),
        ("version", status.version.clone()),
        ("encryption", status.encryption.mode.clone()),
    ])
    .set(1);

    let connections = gauge_family(
        &mut registry,
        "connections",
        "Connections and targets by state: established, pending, retrying, failed",
    );
    for (state, n) in status.connection_counts().by_state() {
        connections
            .get_or_create(&vec![("state", state.to_owned())])
            .set(gauge(n));
    }

    let peers = gauge_family(&mut registry, "peers", "Known peers, by reachability");
    for reachable in [true, false] {
        let n = status
            .peers
            .iter()
            .filter(|p| !p.is_local && p.reachable == reachable)
            .count();
        peers
            .get_or_create(&vec![("reachable", reachable.to_string())])
            .set(gauge(n));
    }

    let failures = counter_family(
        &mut registry,
        "handshake_failures",
        "Connections that closed before their handshake completed, by reason",
    );
    for (reason, n) in &status.handshake_failures {
        failures
            .get_or_create(&vec![("reason", reason.clone())])
            .inc_by(*n);
    }

    let stalls = counter_family(
        &mut registry,
        "watchdog_stalls",
        "Times a thread was found stuck on one piece of work for longer than the watchdog allows, by thread",
    );
    for (thread, n) in &status.watchdog_stalls {
        stalls
            .get_or_create(&vec![("thread", thread.clone())])
            .inc_by(*n);
    }

    let pmtu = gauge_family(
        &mut registry,
        "path_mtu_bytes",
        "Largest UDP payload sent to each neighbour",
    );
    let usable = gauge_family(
        &mut registry,
        "data_path_usable",
        "1 if UDP heartbeats flow both ways to the neighbour, so frames use the link",
    );
    for c in &status.connections {
        let (Some(peer), Some(path)) = (&c.peer, &c.data_path) else {
            continue;
        };
        let labels = vec![
            ("peer", peer.clone()),
            ("nickname", c.nickname.clone().unwrap_or_default()),
        ];
        pmtu.get_or_create(&labels).set(gauge(path.pmtu));
        usable.get_or_create(&labels).set(i64::from(path.usable));
    }

    let gossip_bytes = counter_family(
        &mut registry,
        "gossip_bytes",
        "Gossip bytes by channel, kind and direction",
    );
    let gossip_messages = counter_family(
        &mut registry,
        "gossip_messages",
        "Gossip messages by channel, kind and direction",
    );
    for g in &status.gossip {
        for (direction, messages, bytes) in [
            ("sent", g.sent_messages, g.sent_bytes),
            ("received", g.received_messages, g.received_bytes),
        ] {
            let labels = vec![
                ("channel", g.channel.clone()),
                ("kind", g.kind.clone()),
                ("direction", direction.to_owned()),
            ];
            gossip_bytes.get_or_create(&labels).inc_by(bytes);
            gossip_messages.get_or_create(&labels).inc_by(messages);
        }
    }

    counter(
        &mut registry,
        "encryption_replay_drops",
        "Datagrams dropped because they replayed an earlier one",
        status.encryption.replay_drops,
    );
    counter(
        &mut registry,
        "encryption_rekeys",
        "Data-session keys replaced (sending side)",
        status.encryption.rekeys,
    );
    counter(
        &mut registry,
        "encryption_control_rekeys",
        "Control-channel keys replaced (sending side)",
        status.encryption.control_rekeys,
    );

    if let Some(dp) = &status.data_plane {
        let frames = counter_family(
            &mut registry,
            "frames",
            "Frames through the data plane: read from the TAP device (from_tap), written to it (to_tap), sent to peers (sent)",
        );
        for (direction, n) in [
            ("from_tap", dp.frames_from_tap),
            ("to_tap", dp.frames_to_tap),
            ("sent", dp.frames_sent),
        ] {
            frames
                .get_or_create(&vec![("direction", direction.to_owned())])
                .inc_by(n);
        }
        let large = counter_family(
            &mut registry,
            "large_frames",
            "TCP super-segments carried whole: sent to peers (sent), reassembled and written to the TAP device (delivered)",
        );
        for (direction, n) in [
            ("sent", dp.large_frames_sent),
            ("delivered", dp.large_frames_delivered),
        ] {
            large
                .get_or_create(&vec![("direction", direction.to_owned())])
                .inc_by(n);
        }
        let bytes = counter_family(
            &mut registry,
            "bytes",
            "Bytes through the data plane: frames read from the TAP device (from_tap) and written to it (to_tap), UDP payload sent to peers (sent) and received (received), datagrams forwarded for other peers (relayed)",
        );
        for (direction, n) in [
            ("from_tap", dp.bytes_from_tap),
            ("to_tap", dp.bytes_to_tap),
            ("sent", dp.bytes_sent),
            ("received", dp.bytes_received),
            ("relayed", dp.bytes_relayed),
        ] {
            bytes
                .get_or_create(&vec![("direction", direction.to_owned())])
                .inc_by(n);
        }
        counter(
            &mut registry,
            "datagrams_relayed",
            "Datagrams forwarded for other peers",
            dp.datagrams_relayed,
        );
        let dropped = counter_family(
            &mut registry,
            "dropped",
            "Frames or datagrams dropped, by reason",
        );
        let errors = [
            ("tap_write_error", dp.tap_write_errors),
            ("udp_too_big", dp.udp_too_big),
            ("udp_send_failed", dp.udp_send_failed),
            ("control_send_dropped", dp.control_send_dropped),
            ("unknown_sender", dp.unknown_sender),
            ("reassembly_abandoned", dp.reassembly_abandoned),
        ];
        let crypto: Vec<(String, u64)> = dp
            .crypto_dropped
            .iter()
            .map(|(r, n)| (format!("crypto_{r}"), *n))
            .chain([("plaintext_refused".to_owned(), dp.plaintext_refused)])
            .collect();
        let reasons = dp.dropped.iter().map(|(r, n)| (r.as_str(), *n));
        let crypto = crypto.iter().map(|(r, n)| (r.as_str(), *n));
        for (reason, n) in reasons.chain(errors).chain(crypto) {
            dropped
                .get_or_create(&vec![("reason", reason.to_owned())])
                .inc_by(n);
        }
        counter(
            &mut registry,
            "icmp_frag_needed",
            "ICMP fragmentation-needed messages written back for frames too big for the path",
            dp.icmp_frag_needed,
        );
        counter(
            &mut registry,
            "fragmented",
            "IPv4 packets fragmented to fit the path",
            dp.fragmented,
        );
        let macs = gauge_family(&mut registry, "macs", "MAC addresses known");
        macs.get_or_create(&Vec::new()).set(gauge(dp.macs));
    }

    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::status::{DataPlaneStatus, GossipStatus};

    fn status() -> RouterStatus {
        serde_json::from_value(serde_json::json!({
            "name": "7a:1f:00:9c:3e:01", "nickname": "host-a", "uid": "aa",
            "version": "0.1.0", "protocol_min": 1, "protocol_max": 1, "listen_port": 6783,
            "discovery": true, "topology_version": 7,
            "connections": [
                {"peer": "7a:1f:00:9c:3e:02", "nickname": "host-b", "address": "10.9.0.2:6783",
                 "direction": "outbound", "state": "established", "conn_id": "01ab",
                 "protocol_version": 1, "age_secs": 5,
                 "data_path": {"udp_address": "10.9.0.2:6783", "usable": true, "pmtu": 1472,
                               "pmtu_verified": true}}
            ],
            "targets": [
                {"address": "10.9.0.8:6783", "origin": "user", "state": "retrying",
                 "failures": 5, "last_error": "connection refused", "retry_in_secs": 3}
            ],
            "peers": [],
            "data_plane": null,
            "handshake_failures": {"timeout": 2}
        }))
        .unwrap()
    }

    #[test]
    fn every_family_is_exposed_with_its_labels() {
        let mut st = status();
        st.gossip = vec![GossipStatus {
            channel: "topology".into(),
            kind: "delta".into(),
            sent_messages: 3,
            sent_bytes: 300,
            received_messages: 1,
            received_bytes: 100,
        }];
        st.encryption.control_rekeys = 3;
        st.data_plane = Some(DataPlaneStatus {
            frames_sent: 9,
            bytes_sent: 12_345,
            dropped: [("no_route".to_owned(), 4)].into(),
            crypto_dropped: [("replay_duplicate".to_owned(), 2)].into(),
            ..Default::default()
        });
        let text = encode_status(&st).unwrap();
        for line in [
            "weft_connections{state=\"established\"} 1",
            "weft_connections{state=\"failed\"} 1",
            "weft_handshake_failures_total{reason=\"timeout\"} 2",
            "weft_path_mtu_bytes{peer=\"7a:1f:00:9c:3e:02\",nickname=\"host-b\"} 1472",
            "weft_gossip_bytes_total{channel=\"topology\",kind=\"delta\",direction=\"sent\"} 300",
            "weft_encryption_replay_drops_total 0",
            "weft_encryption_rekeys_total 0",
            "weft_encryption_control_rekeys_total 3",
            "weft_frames_total{direction=\"sent\"} 9",
            "weft_dropped_total{reason=\"no_route\"} 4",
            "weft_bytes_total{direction=\"sent\"} 12345",
            "weft_dropped_total{reason=\"crypto_replay_duplicate\"} 2",
            "weft_router_info{name=\"7a:1f:00:9c:3e:01\",nickname=\"host-a\",version=\"0.1.0\",encryption=\"disabled\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    }
}
