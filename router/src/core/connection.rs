//! One TCP control connection, as a state machine over bytes and time.
//!
//! ```text
//!   opened ──send preamble──▶ AwaitPreamble ──their preamble, common version──▶
//!   AwaitCrypto (Hello, then Noise XX when encrypting; core/crypto/handshake.rs)
//!   ──done──▶ AwaitFeatures (our Features sent) ──their Features──▶ Established
//! ```
//!
//! With encryption every byte after the handshake is a record of the
//! [`SecureChannel`]: frames are sealed on the way out and the stream is
//! opened before it reaches the frame decoder.
//!
//! The connection knows nothing of other connections; whether the features
//! it received are acceptable (not ourselves, no name collision, not a
//! duplicate) is the router's call.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::core::conn_maker::ConnHandle;
use crate::core::crypto::{
    ChannelError, ChannelRekeys, DataKeys, DataLimits, Handshake, HandshakeConfig, HandshakeError,
    HandshakeOutcome, HandshakeProgress, PskId, PublicKey, Role, SecureChannel, refusal_error,
};
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
    /// This source opened connections faster than handshakes are allowed.
    RateLimited(std::net::IpAddr),
    HeartbeatTimeout(Duration),
    /// The encryption handshake failed (wrong password, untrusted key, ...).
    Handshake(HandshakeError),
    /// An encrypted record failed to authenticate: tampering on the path.
    Tampered(String),
    /// The remote end sent `Close` with this reason.
    RemoteClosed(String),
    /// The socket closed or failed (reported by the I/O shell).
    Io(String),
    Shutdown,
}

impl CloseReason {
    /// A snake_case name for counting connections that failed by reason;
    /// `None` for a shutdown, which is no failure.
    pub fn label(&self) -> Option<&'static str> {
        Some(match self {
            CloseReason::Protocol(_) => "protocol_error",
            CloseReason::NoCommonVersion { .. } => "version_mismatch",
            CloseReason::ConnectedToSelf => "self",
            CloseReason::NameCollision { .. } => "name_collision",
            CloseReason::Duplicate { .. } => "duplicate",
            CloseReason::ReplacedByNewIncarnation => "replaced",
            CloseReason::HandshakeTimeout(_) => "timeout",
            CloseReason::TooManyHandshakes(_) => "too_many_handshakes",
            CloseReason::RateLimited(_) => "rate_limited",
            CloseReason::HeartbeatTimeout(_) => "heartbeat_timeout",
            CloseReason::Handshake(e) => e.label(),
            CloseReason::Tampered(_) => "tampered",
            CloseReason::RemoteClosed(_) => "closed_by_peer",
            CloseReason::Io(_) => "io",
            CloseReason::Shutdown => return None,
        })
    }
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
            CloseReason::RateLimited(ip) => write!(
                f,
                "too many connection attempts from {ip}; refusing until it slows down"
            ),
            CloseReason::HeartbeatTimeout(d) => write!(f, "no heartbeat for {d:?}"),
            CloseReason::Handshake(e) => write!(f, "{e}"),
            CloseReason::Tampered(e) => write!(
                f,
                "encrypted control stream failed to authenticate ({e}): tampering on the path"
            ),
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
    /// The Hello exchange and, when encrypting, the Noise handshake.
    AwaitCrypto {
        version: u8,
    },
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
    /// Handshake bytes to write to the socket as they are.
    Send(Vec<u8>),
    /// Versions agreed and the stream secured (or agreed to be plaintext);
    /// the router must now send our features.
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
    crypto: HandshakeConfig,
    /// When the control channel rekeys (the data sessions' schedule).
    rekey: DataLimits,
    handshake: Option<Box<Handshake>>,
    channel: Option<SecureChannel>,
    /// What the encryption handshake established, if it did.
    pub security: Option<Security>,
    /// The data-plane receiver index we chose for this connection.
    pub local_index: u32,
    /// Data-plane keys, until the router takes them for the session.
    data_keys: Option<DataKeys>,
    /// Scratch for opened records.
    plain: Vec<u8>,
}

/// The outcome of an encryption handshake, for status and the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Security {
    /// The peer's authenticated static key.
    pub remote_static: PublicKey,
    /// The receiver index the peer chose: datagrams to it carry this.
    pub remote_index: u32,
    /// Which password authenticated the peer; `None` for keys only.
    pub psk_id: Option<PskId>,
}

impl Connection {
    // Each argument is a distinct piece of per-connection state the router
    // decides; a builder would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        now: Instant,
        handle: ConnHandle,
        direction: Direction,
        remote_addr: SocketAddr,
        preamble: Preamble,
        local_half: u64,
        crypto: HandshakeConfig,
        rekey: DataLimits,
        local_index: u32,
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
            crypto,
            rekey,
            handshake: None,
            channel: None,
            security: None,
            local_index,
            data_keys: None,
            plain: Vec::new(),
        }
    }

    /// Whether control messages can be sent (the handshake is past the
    /// point where the peer reads frames).
    pub fn can_send_messages(&self) -> bool {
        matches!(
            self.state,
            ConnState::AwaitFeatures { .. } | ConnState::Established { .. }
        )
    }

    /// How often the encrypted control channel has rekeyed, each way.
    pub fn control_rekeys(&self) -> ChannelRekeys {
        self.channel
            .as_ref()
            .map(SecureChannel::rekeys)
            .unwrap_or_default()
    }

    /// The data-plane keys the handshake derived, once.
    pub fn take_data_keys(&mut self) -> Option<DataKeys> {
        self.data_keys.take()
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
                        self.state = ConnState::AwaitCrypto { version };
                        let role = if self.is_outbound() {
                            Role::Initiator
                        } else {
                            Role::Responder
                        };
                        let mut hs =
                            Box::new(Handshake::new(role, self.crypto.clone(), self.local_index));
                        let first = hs.start().map_err(CloseReason::Handshake)?;
                        if !first.is_empty() {
                            events.push(ConnEvent::Send(first));
                        }
                        self.handshake = Some(hs);
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
        if let ConnState::AwaitCrypto { version } = self.state {
            let Some(hs) = self.handshake.as_mut() else {
                return Ok(());
            };
            match hs.handle_bytes(bytes) {
                Ok(HandshakeProgress::Continue { send }) => {
                    if !send.is_empty() {
                        events.push(ConnEvent::Send(send));
                    }
                    return Ok(());
                }
                Ok(HandshakeProgress::Done {
                    send,
                    outcome,
                    leftover: rest,
                }) => {
                    if !send.is_empty() {
                        events.push(ConnEvent::Send(send));
                    }
                    self.handshake = None;
                    if let HandshakeOutcome::Established(e) = outcome {
                        let mut e = *e;
                        e.channel.set_rekey_limits(&self.rekey);
                        self.channel = Some(e.channel);
                        self.data_keys = Some(e.data_keys);
                        self.security = Some(Security {
                            remote_static: e.remote_static,
                            remote_index: e.remote_index,
                            psk_id: e.psk_id,
                        });
                    }
                    self.state = ConnState::AwaitFeatures { version };
                    events.push(ConnEvent::VersionAgreed(version));
                    return self.read_stream(now, &rest, events);
                }
                Err(e) => {
                    let farewell = hs.take_farewell();
                    if !farewell.is_empty() {
                        events.push(ConnEvent::Send(farewell));
                    }
                    return Err(CloseReason::Handshake(e));
                }
            }
        }
        self.read_stream(now, bytes, events)
    }

    /// Frames after the handshake: opened from records when encrypted.
    fn read_stream(
        &mut self,
        now: Instant,
        bytes: &[u8],
        events: &mut Vec<ConnEvent>,
    ) -> Result<(), CloseReason> {
        match self.channel.as_mut() {
            Some(ch) => {
                self.plain.clear();
                ch.open(bytes, &mut self.plain)
                    .map_err(|e| match (e, &self.crypto) {
                        // The responder checks our key after the handshake
                        // finished here, and refuses it in clear.
                        (ChannelError::Refused(code), HandshakeConfig::Noise(n)) => {
                            CloseReason::Handshake(refusal_error(code, n.public_key()))
                        }
                        (e, _) => CloseReason::Tampered(e.to_string()),
                    })?;
                self.decoder.push(&self.plain);
            }
            None => self.decoder.push(bytes),
        }
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
                (ConnState::AwaitPreamble | ConnState::AwaitCrypto { .. }, _) => {
                    return Err(CloseReason::Protocol(WireError::Malformed {
                        what: "handshake",
                        detail: "frame before the handshake finished".into(),
                    }));
                }
            }
        }
        Ok(())
    }

    /// Frames `msg` for sending and notes the time.
    /// Sealed into records when the connection is encrypted.
    pub fn encode(&mut self, now: Instant, msg: &ControlMessage) -> Result<Vec<u8>, WireError> {
        self.last_send = now;
        let framed = encode_frame(&msg.encode())?;
        let Some(ch) = self.channel.as_mut() else {
            return Ok(framed);
        };
        let mut out = Vec::with_capacity(framed.len() + 64);
        ch.seal(now, &framed, &mut out)
            .map_err(|e| WireError::Malformed {
                what: "secure channel",
                detail: e.to_string(),
            })?;
        Ok(out)
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

    #[test]
    fn close_reasons_carry_metric_labels() {
        use crate::core::crypto::{HandshakeError, PublicKey};
        let cases = [
            (
                CloseReason::HandshakeTimeout(Duration::from_secs(5)),
                Some("timeout"),
            ),
            (CloseReason::ConnectedToSelf, Some("self")),
            (
                CloseReason::TooManyHandshakes(64),
                Some("too_many_handshakes"),
            ),
            (
                CloseReason::Handshake(HandshakeError::PasswordMismatch),
                Some("password_mismatch"),
            ),
            (
                CloseReason::Handshake(HandshakeError::DecryptFailed),
                Some("password_mismatch"),
            ),
            (
                CloseReason::Handshake(HandshakeError::UntrustedKey(PublicKey([7; 32]))),
                Some("untrusted_key"),
            ),
            (
                CloseReason::Handshake(HandshakeError::KeyRefused(PublicKey([7; 32]))),
                Some("key_refused"),
            ),
            (
                CloseReason::Handshake(HandshakeError::UnsupportedVersion(9)),
                Some("version_mismatch"),
            ),
            (
                CloseReason::RemoteClosed("bye".into()),
                Some("closed_by_peer"),
            ),
            (
                CloseReason::Io("connection reset by peer".into()),
                Some("io"),
            ),
            (CloseReason::Shutdown, None),
        ];
        for (reason, label) in cases {
            assert_eq!(reason.label(), label, "{reason}");
        }
    }

    fn features(name: u64) -> Features {
        Features {
            name: PeerName::from_u64(name).unwrap(),
            nickname: "peer".into(),
            uid: PeerUid(42),
            conn_half: 0xf0,
            listen_port: 6783,
            udp_port: 6783,
            trusts_you: false,
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
            HandshakeConfig::Plaintext,
            DataLimits::default(),
            7,
        )
    }

    /// What a plaintext initiator sends first.
    fn preamble_and_hello(versions: std::ops::RangeInclusive<u8>) -> Vec<u8> {
        let mut stream = Preamble::new(versions).emit().to_vec();
        stream.extend(crate::core::crypto::handshake::PLAINTEXT_HELLO);
        stream
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
        let mut stream = preamble_and_hello(1..=1);
        stream.extend(encode_frame(&ControlMessage::Features(features(5)).encode()).unwrap());
        stream.extend(encode_frame(&ControlMessage::Heartbeat.encode()).unwrap());
        let mut events = Vec::new();
        for b in stream {
            events.extend(c.handle_bytes(now, &[b]));
        }
        assert_eq!(
            events,
            vec![
                ConnEvent::Send(crate::core::crypto::handshake::PLAINTEXT_HELLO.to_vec()),
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
        let mut stream = preamble_and_hello(1..=1);
        stream.extend(encode_frame(&ControlMessage::Heartbeat.encode()).unwrap());
        assert!(matches!(
            closed(&c.handle_bytes(now, &stream)),
            Some(CloseReason::Protocol(_))
        ));

        let mut c = conn(now, 1..=1);
        let mut stream = preamble_and_hello(1..=1);
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
        let mut stream = preamble_and_hello(1..=1);
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
        let mut stream = preamble_and_hello(1..=1);
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
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(events[3], ConnEvent::Message(gossip));
        assert_eq!(
            closed(&events),
            Some(CloseReason::RemoteClosed("bye".into()))
        );
    }

    mod encrypted {
        use super::*;

        fn noise(password: &str) -> HandshakeConfig {
            crate::core::crypto::test_config(password)
        }

        fn pair(a: HandshakeConfig, b: HandshakeConfig) -> (Connection, Connection) {
            let now = Instant::now();
            let target = PeerAddr::from_socket("192.0.2.2:6783".parse().unwrap());
            let mk = |dir, crypto, index| {
                Connection::new(
                    now,
                    1,
                    dir,
                    "192.0.2.1:40000".parse().unwrap(),
                    Preamble::new(1..=1),
                    0x0f,
                    crypto,
                    DataLimits::default(),
                    index,
                )
            };
            (
                mk(Direction::Outbound { target }, a, 11),
                mk(Direction::Inbound, b, 22),
            )
        }

        /// Pumps bytes both ways until neither side has anything to send;
        /// returns every non-Send event of each side.
        fn pump(a: &mut Connection, b: &mut Connection) -> (Vec<ConnEvent>, Vec<ConnEvent>) {
            let now = Instant::now();
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            let mut to_b = a.preamble_bytes();
            let mut to_a = b.preamble_bytes();
            for _ in 0..10 {
                let (mut next_b, mut next_a) = (Vec::new(), Vec::new());
                // A side that closed is gone: the router drops it.
                if closed(&eb).is_none() {
                    for e in b.handle_bytes(now, &to_b) {
                        match e {
                            ConnEvent::Send(bytes) => next_a.extend(bytes),
                            other => eb.push(other),
                        }
                    }
                }
                if closed(&ea).is_none() {
                    for e in a.handle_bytes(now, &to_a) {
                        match e {
                            ConnEvent::Send(bytes) => next_b.extend(bytes),
                            other => ea.push(other),
                        }
                    }
                }
                if next_a.is_empty() && next_b.is_empty() {
                    break;
                }
                (to_a, to_b) = (next_a, next_b);
            }
            (ea, eb)
        }

        #[test]
        fn same_password_secures_the_stream_and_messages_cross_sealed() {
            let (mut a, mut b) = pair(noise("sesame"), noise("sesame"));
            let (ea, eb) = pump(&mut a, &mut b);
            assert_eq!(ea, vec![ConnEvent::VersionAgreed(1)]);
            assert_eq!(eb, vec![ConnEvent::VersionAgreed(1)]);
            let (sa, sb) = (a.security.clone().unwrap(), b.security.clone().unwrap());
            assert_eq!((sa.remote_index, sb.remote_index), (22, 11));
            assert!(a.take_data_keys().is_some() && b.take_data_keys().is_some());
            let now = Instant::now();
            let msg = ControlMessage::Features(features(5));
            let wire = a.encode(now, &msg).unwrap();
            let plain = encode_frame(&msg.encode()).unwrap();
            assert!(
                !wire.windows(4).any(|w| w == b"peer"),
                "the nickname crossed in clear"
            );
            assert_ne!(wire, plain);
            assert_eq!(
                b.handle_bytes(now, &wire),
                vec![ConnEvent::Features(features(5))]
            );
            // A flipped byte in a record closes the connection.
            let mut wire = a.encode(now, &ControlMessage::Heartbeat).unwrap();
            let last = wire.len() - 1;
            wire[last] ^= 1;
            assert!(matches!(
                closed(&b.handle_bytes(now, &wire)),
                Some(CloseReason::Tampered(_))
            ));
        }

        #[test]
        fn mismatches_close_both_sides_with_the_reason_in_words() {
            let cases = [
                (noise("a"), noise("b"), "password mismatch"),
                (HandshakeConfig::Plaintext, noise("b"), "encryption"),
                (noise("a"), HandshakeConfig::Plaintext, "encryption"),
            ];
            for (x, y, words) in cases {
                let (mut a, mut b) = pair(x, y);
                let (ea, eb) = pump(&mut a, &mut b);
                for (side, events) in [("dialler", &ea), ("acceptor", &eb)] {
                    let reason = closed(events)
                        .unwrap_or_else(|| panic!("{side} did not close: {events:?}"));
                    assert!(
                        matches!(reason, CloseReason::Handshake(_)),
                        "{side}: {reason:?}"
                    );
                    assert!(
                        reason.to_string().contains(words),
                        "{side}: {reason} lacks {words:?}"
                    );
                }
                assert!(a.security.is_none() && b.security.is_none());
            }
        }

        #[test]
        fn a_refused_key_is_named_on_both_sides_whichever_side_refuses() {
            use crate::core::crypto::handshake::tests::{keypair as key, with_keys};
            let trusting = |own: u8, trusted: u8| with_keys(own, &[trusted]);
            // The dialler (key 1) refuses the acceptor's key 2 after message
            // 2; then the acceptor refuses the dialler's key after message 3,
            // when the dialler has already finished its side.
            for (dialler, acceptor, refused) in [
                (trusting(1, 3), trusting(2, 1), 2),
                (trusting(1, 2), trusting(2, 3), 1),
            ] {
                let (mut a, mut b) = pair(dialler, acceptor);
                let (ea, eb) = pump(&mut a, &mut b);
                let (refuser, refusee) = if refused == 2 { (&ea, &eb) } else { (&eb, &ea) };
                assert_eq!(
                    closed(refuser),
                    Some(CloseReason::Handshake(HandshakeError::UntrustedKey(
                        key(refused).public()
                    ))),
                    "{ea:?} {eb:?}"
                );
                assert_eq!(
                    closed(refusee),
                    Some(CloseReason::Handshake(HandshakeError::KeyRefused(
                        key(refused).public()
                    ))),
                    "{ea:?} {eb:?}"
                );
            }
        }
    }
}
