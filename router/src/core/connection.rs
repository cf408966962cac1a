//! One TCP control connection, as a state machine over bytes and time.
//!
//! ```text
//!   opened ──send preamble──▶ AwaitPreamble ──their preamble, common version──▶
//!   AwaitFeatures (our Features sent) ──their Features──▶ Established
//! ```
//!
//! The connection knows nothing of other connections; whether the features
//! it received are acceptable (not ourselves, no name collision, not a
//! duplicate) is the router's call.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::core::conn_maker::ConnHandle;
use crate::core::identity::{ConnId, PeerName, PeerUid};
use crate::core::wire::WireError;
use crate::core::wire::addr::PeerAddr;
use crate::core::wire::control::{ControlMessage, Features};
use crate::core::wire::framing::{FrameDecoder, encode_frame};
use crate::core::wire::preamble::{PREAMBLE_LEN, Preamble};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Direction {
    /// We dialled `target`.
    Outbound {
        target: PeerAddr,
    },
    Inbound,
}

/// Why a connection ended, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Protocol(WireError),
    NoCommonVersion {
        ours: (u8, u8),
        theirs: (u8, u8),
    },
    ConnectedToSelf,
    NameCollision {
        name: PeerName,
        their_uid: PeerUid,
    },
    Duplicate {
        kept_initiated_by: PeerName,
    },
    ReplacedByNewIncarnation,
    HandshakeTimeout(Duration),
    TooManyHandshakes(usize),
    HeartbeatTimeout(Duration),
    /// The remote end sent `Close` with this reason.
    RemoteClosed(String),
    /// The socket closed or failed (reported by the I/O shell).
    Io(String),
    Shutdown,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Protocol(e) => write!(f, "protocol error: {e}"),
            CloseReason::NoCommonVersion { ours, theirs } => write!(
                f,
                "no common protocol version: we speak {}..={}, the peer speaks {}..={}; upgrade the older router",
                ours.0, ours.1, theirs.0, theirs.1
            ),
            CloseReason::ConnectedToSelf => write!(f, "connected to ourselves"),
            CloseReason::NameCollision { name, their_uid } => write!(
                f,
                "peer name collision: another router (uid {their_uid}) also calls itself {name}; give one of them a different --name or remove its home directory's peer-name file"
            ),
            CloseReason::Duplicate { kept_initiated_by } => write!(
                f,
                "duplicate connection: both peers dialled; keeping the one initiated by {kept_initiated_by}"
            ),
            CloseReason::ReplacedByNewIncarnation => write!(
                f,
                "replaced by a connection from the peer's new incarnation"
            ),
            CloseReason::HandshakeTimeout(d) => write!(f, "handshake not completed within {d:?}"),
            CloseReason::TooManyHandshakes(n) => write!(
                f,
                "too many pending handshakes ({n}); refusing new connections until they finish"
            ),
            CloseReason::HeartbeatTimeout(d) => write!(f, "no heartbeat for {d:?}"),
            CloseReason::RemoteClosed(reason) => write!(f, "closed by peer: {reason}"),
            CloseReason::Io(e) => write!(f, "{e}"),
            CloseReason::Shutdown => write!(f, "router shutting down"),
        }
    }
}

/// Handshake progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnState {
    AwaitPreamble,
    AwaitFeatures {
        version: u8,
    },
    Established {
        version: u8,
        remote: Features,
        id: ConnId,
    },
}

/// What a call to [`Connection::handle_bytes`] produced, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// Versions agreed; the router must now send our features.
    VersionAgreed(u8),
    /// The remote's features arrived; the connection is established unless
    /// the router rejects them.
    Features(Features),
    Message(ControlMessage),
    /// The connection must close; always the last event. Messages that
    /// arrived before the problem in the same read come first, so a delta
    /// sent just before `Close` is not lost.
    Closed(CloseReason),
}

#[derive(Debug)]
pub struct Connection {
    pub handle: ConnHandle,
    pub direction: Direction,
    pub remote_addr: SocketAddr,
    pub state: ConnState,
    pub opened_at: Instant,
    pub established_at: Option<Instant>,
    pub last_recv: Instant,
    pub last_send: Instant,
    /// Our random half of the connection id.
    pub local_half: u64,
    preamble: Preamble,
    preamble_buf: Vec<u8>,
    decoder: FrameDecoder,
}

impl Connection {
    pub fn new(
        now: Instant,
        handle: ConnHandle,
        direction: Direction,
        remote_addr: SocketAddr,
        preamble: Preamble,
        local_half: u64,
    ) -> Self {
        Self {
            handle,
            direction,
            remote_addr,
            state: ConnState::AwaitPreamble,
            opened_at: now,
            established_at: None,
            last_recv: now,
            last_send: now,
            local_half,
            preamble,
            preamble_buf: Vec::with_capacity(PREAMBLE_LEN),
            decoder: FrameDecoder::new(),
        }
    }

    /// The bytes to send as soon as the socket opens.
    pub fn preamble_bytes(&self) -> Vec<u8> {
        self.preamble.emit().to_vec()
    }

    pub fn is_outbound(&self) -> bool {
        matches!(self.direction, Direction::Outbound { .. })
    }

    pub fn remote(&self) -> Option<&Features> {
        match &self.state {
            ConnState::Established { remote, .. } => Some(remote),
            _ => None,
        }
    }

    pub fn id(&self) -> Option<ConnId> {
        match &self.state {
            ConnState::Established { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// Where the remote router accepts connections: its IP as we see it and
    /// the listen port it advertised.
    pub fn remote_listen_addr(&self) -> Option<SocketAddr> {
        self.remote()
            .map(|f| SocketAddr::new(self.remote_addr.ip(), f.listen_port))
    }

    /// Consumes bytes read from the socket. If the connection must close,
    /// the last event is [`ConnEvent::Closed`].
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> Vec<ConnEvent> {
        self.last_recv = now;
        let mut events = Vec::new();
        if let Err(reason) = self.read(now, bytes, &mut events) {
            events.push(ConnEvent::Closed(reason));
        }
        events
    }

    fn read(
        &mut self,
        now: Instant,
        mut bytes: &[u8],
        events: &mut Vec<ConnEvent>,
    ) -> Result<(), CloseReason> {
        if self.state == ConnState::AwaitPreamble {
            let take = (PREAMBLE_LEN - self.preamble_buf.len()).min(bytes.len());
            self.preamble_buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            match Preamble::parse(&self.preamble_buf).map_err(CloseReason::Protocol)? {
                None => return Ok(()),
                Some(theirs) => match self.preamble.negotiate(&theirs) {
                    Some(version) => {
                        self.state = ConnState::AwaitFeatures { version };
                        events.push(ConnEvent::VersionAgreed(version));
                    }
                    None => {
                        return Err(CloseReason::NoCommonVersion {
                            ours: (self.preamble.min_version, self.preamble.max_version),
                            theirs: (theirs.min_version, theirs.max_version),
                        });
                    }
                },
            }
        }
        self.decoder.push(bytes);
        while let Some(frame) = self.decoder.next_frame().map_err(CloseReason::Protocol)? {
            let msg = ControlMessage::decode(&frame).map_err(CloseReason::Protocol)?;
            match (&self.state, msg) {
                (ConnState::AwaitFeatures { version }, ControlMessage::Features(features)) => {
                    let version = *version;
                    let id = ConnId(self.local_half ^ features.conn_half);
                    self.state = ConnState::Established {
                        version,
                        remote: features.clone(),
                        id,
                    };
                    self.established_at = Some(now);
                    events.push(ConnEvent::Features(features));
                }
                (ConnState::AwaitFeatures { .. }, ControlMessage::Close { reason }) => {
                    return Err(CloseReason::RemoteClosed(reason));
                }
                (ConnState::AwaitFeatures { .. }, other) => {
                    return Err(CloseReason::Protocol(WireError::Malformed {
                        what: "handshake",
                        detail: format!("expected features, got {}", message_kind(&other)),
                    }));
                }
                (ConnState::Established { .. }, ControlMessage::Features(_)) => {
                    return Err(CloseReason::Protocol(WireError::Malformed {
                        what: "handshake",
                        detail: "features sent twice".into(),
                    }));
                }
                (ConnState::Established { .. }, ControlMessage::Close { reason }) => {
                    return Err(CloseReason::RemoteClosed(reason));
                }
                (ConnState::Established { .. }, msg) => events.push(ConnEvent::Message(msg)),
                (ConnState::AwaitPreamble, _) => {
                    return Err(CloseReason::Protocol(WireError::Malformed {
                        what: "handshake",
                        detail: "frame before preamble".into(),
                    }));
                }
            }
        }
        Ok(())
    }

    /// Frames `msg` for sending and notes the time.
    pub fn encode(&mut self, now: Instant, msg: &ControlMessage) -> Result<Vec<u8>, WireError> {
        self.last_send = now;
        encode_frame(&msg.encode())
    }
}

pub fn message_kind(msg: &ControlMessage) -> &'static str {
    match msg {
        ControlMessage::Features(_) => "features",
        ControlMessage::Heartbeat => "heartbeat",
        ControlMessage::Gossip { .. } => "gossip",
        ControlMessage::GossipUnicast { .. } => "unicast gossip",
        ControlMessage::GossipBroadcast { .. } => "broadcast gossip",
        ControlMessage::Close { .. } => "close",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(name: u64) -> Features {
        Features {
            name: PeerName::from_u64(name).unwrap(),
            nickname: "peer".into(),
            uid: PeerUid(42),
            conn_half: 0xf0,
            listen_port: 6783,
            udp_port: 6783,
        }
    }

    fn conn(now: Instant, versions: std::ops::RangeInclusive<u8>) -> Connection {
        Connection::new(
            now,
            1,
            Direction::Inbound,
            "192.0.2.1:40000".parse().unwrap(),
            Preamble::new(versions),
            0x0f,
        )
    }

    /// The reason the connection must close, if the events end with one.
    fn closed(events: &[ConnEvent]) -> Option<CloseReason> {
        match events.last() {
            Some(ConnEvent::Closed(r)) => Some(r.clone()),
            _ => None,
        }
    }

    #[test]
    fn completes_a_handshake_delivered_byte_by_byte() {
        let now = Instant::now();
        let mut c = conn(now, 1..=2);
        let mut stream = Preamble::new(1..=1).emit().to_vec();
        stream.extend(encode_frame(&ControlMessage::Features(features(5)).encode()).unwrap());
        stream.extend(encode_frame(&ControlMessage::Heartbeat.encode()).unwrap());
        let mut events = Vec::new();
        for b in stream {
            events.extend(c.handle_bytes(now, &[b]));
        }
        assert_eq!(
            events,
            vec![
                ConnEvent::VersionAgreed(1),
                ConnEvent::Features(features(5)),
                ConnEvent::Message(ControlMessage::Heartbeat)
            ]
        );
        assert_eq!(c.id(), Some(ConnId(0xff)));
        assert_eq!(
            c.remote_listen_addr(),
            Some("192.0.2.1:6783".parse().unwrap())
        );
    }

    #[test]
    fn rejects_version_mismatch_garbage_and_out_of_order_messages() {
        let now = Instant::now();
        let err =
            closed(&conn(now, 2..=3).handle_bytes(now, &Preamble::new(1..=1).emit())).unwrap();
        assert_eq!(
            err,
            CloseReason::NoCommonVersion {
                ours: (2, 3),
                theirs: (1, 1)
            }
        );
        assert!(err.to_string().contains("upgrade the older router"));

        let err = closed(&conn(now, 1..=1).handle_bytes(now, b"SSH-2.0-OpenSSH")).unwrap();
        assert_eq!(err, CloseReason::Protocol(WireError::BadMagic));

        let mut c = conn(now, 1..=1);
        let mut stream = Preamble::new(1..=1).emit().to_vec();
        stream.extend(encode_frame(&ControlMessage::Heartbeat.encode()).unwrap());
        assert!(matches!(
            closed(&c.handle_bytes(now, &stream)),
            Some(CloseReason::Protocol(_))
        ));

        let mut c = conn(now, 1..=1);
        let mut stream = Preamble::new(1..=1).emit().to_vec();
        stream.extend([0x7f, 0, 0, 0]);
        assert!(matches!(
            closed(&c.handle_bytes(now, &stream)),
            Some(CloseReason::Protocol(WireError::FrameTooLarge { .. }))
        ));
    }

    #[test]
    fn a_close_during_the_handshake_carries_the_remote_reason() {
        let now = Instant::now();
        let mut c = conn(now, 1..=1);
        let mut stream = Preamble::new(1..=1).emit().to_vec();
        let close = ControlMessage::Close {
            reason: "peer name collision".into(),
        };
        stream.extend(encode_frame(&close.encode()).unwrap());
        assert_eq!(
            closed(&c.handle_bytes(now, &stream)),
            Some(CloseReason::RemoteClosed("peer name collision".into()))
        );
    }

    #[test]
    fn messages_before_a_close_in_the_same_read_are_not_lost() {
        let now = Instant::now();
        let mut c = conn(now, 1..=1);
        let mut stream = Preamble::new(1..=1).emit().to_vec();
        stream.extend(encode_frame(&ControlMessage::Features(features(5)).encode()).unwrap());
        let gossip = ControlMessage::Gossip {
            channel: "topology".into(),
            payload: vec![0],
        };
        stream.extend(encode_frame(&gossip.encode()).unwrap());
        stream.extend(
            encode_frame(
                &ControlMessage::Close {
                    reason: "bye".into(),
                }
                .encode(),
            )
            .unwrap(),
        );
        let events = c.handle_bytes(now, &stream);
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(events[2], ConnEvent::Message(gossip));
        assert_eq!(
            closed(&events),
            Some(CloseReason::RemoteClosed("bye".into()))
        );
    }
}
