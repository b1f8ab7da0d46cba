//! The WebRTC transport of one bridge, sans-IO: the ICE-lite agent ([`IceLite`]) and, once a
//! check passed, the DTLS-SRTP server session ([`DtlsSession`]) of every WebRTC endpoint, and
//! what follows from them for the bridge's table. Datagrams, commands and time go in; datagrams
//! to send from the media port ([`Transmit`]) and changes of endpoints ([`Update`]) come out.
//! [`super::task`] runs it on the bridge's transport thread.
//!
//! - A STUN datagram goes to the agent its USERNAME's local ufrag names (unique per bridge); the
//!   agent authenticates it and writes the answer, which goes back to the source address. A
//!   datagram naming no known ufrag, or that the agent refuses (wrong password, no FINGERPRINT,
//!   ...), gets no answer and is counted by reason ([`Stats::stun_rejected`]).
//! - A DTLS datagram goes to the session of the endpoint one of whose checks passed from its
//!   source address (at most [`ice::MAX_PAIRS`] addresses per endpoint, the most recently
//!   checked); the session is made with the first one. There is no cookie exchange: a passed
//!   check (which needs the ice-pwd) stands in for it. DTLS from any other address is dropped
//!   and counted ([`Stats::dtls_dropped`]). Flights go to the address the endpoint's latest
//!   DTLS datagram came from.
//! - The endpoint's state ([`WebRtcState`]) and its address in the table follow from both: the
//!   table gets the nominated address once the handshake exported keys (never before: a WebRTC
//!   endpoint receives SRTP only), loses it when consent expires or the session fails or is
//!   closed (close_notify revokes consent, RFC 7675 section 5.2), and gets it back when a valid
//!   check restores consent. Each change comes out once, as an [`Update`]; the first one in
//!   state `connected` carries the exported keys.
//!
//! Removing an endpoint drops its agent and session (a connected session sends close_notify
//! first). Timers: [`Transport::poll_timeout`] is the earliest of every agent's consent deadline
//! and every session's retransmission timer; [`Transport::handle_timeout`] visits every
//! endpoint (O(endpoints) per call; the task calls it once per wakeup, not per datagram).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::dtls::{Certificate, DtlsEvent, DtlsSession, Fingerprint, SrtpKeys};
use super::ice::{self, IceError, IceEvent, IceLite, Reply};
use super::stun::Message;
use crate::core::EndpointUid;
use crate::core::handoff::Kind;

/// Where a WebRTC endpoint's transport is (`EndpointInfo.webrtc_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebRtcState {
    /// No ICE check has nominated an address yet.
    Checking,
    /// An address is nominated; the DTLS handshake has not exported keys yet.
    Handshaking,
    /// Nominated, with consent, and keyed: the endpoint has its address in the table.
    Connected,
    /// The DTLS handshake failed (e.g. a certificate that does not match the offer's
    /// fingerprint): the endpoint needs a new offer (a new endpoint).
    Failed,
    /// Consent expired (no valid check for the consent timeout) or the peer closed DTLS: the
    /// endpoint has no address until a valid check restores consent.
    Expired,
}

impl WebRtcState {
    /// The API's name: `checking`, `handshaking`, `connected`, `failed`, `expired`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Checking => "checking",
            Self::Handshaking => "handshaking",
            Self::Connected => "connected",
            Self::Failed => "failed",
            Self::Expired => "expired",
        }
    }
}

/// A WebRTC endpoint as the transport needs it (from its validated AddEndpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEndpoint {
    /// The endpoint.
    pub uid: EndpointUid,
    /// The bridge's ufrag for it (routes its checks; unique on the bridge).
    pub local_ufrag: String,
    /// The bridge's ice-pwd for it (authenticates its checks).
    pub local_pwd: String,
    /// The endpoint's ufrag (its checks' USERNAME is `local_ufrag:remote_ufrag`).
    pub remote_ufrag: String,
    /// The certificate fingerprint its DTLS client must present.
    pub fingerprint: Fingerprint,
}

/// What the control path tells the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A WebRTC endpoint was added.
    Add(NewEndpoint),
    /// A WebRTC endpoint was removed (RemoveEndpoint, DeleteConference).
    Remove(EndpointUid),
    /// A datagram the control path made (a keyframe request for a receiver that subscribed to
    /// a sender), sent from the media port like the transport's own.
    Send(Transmit),
}

/// A datagram to send from the media port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The datagram.
    pub data: Vec<u8>,
}

/// A change of a WebRTC endpoint, for the bridge's state and table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The endpoint.
    pub uid: EndpointUid,
    /// Its state now.
    pub state: WebRtcState,
    /// The address it has in the table now (`Some` only while `connected`).
    pub addr: Option<SocketAddr>,
    /// The keys its handshake exported: in the first update in state `connected` only.
    pub keys: Option<SrtpKeys>,
}

/// Every reason a STUN datagram can go unanswered ([`IceError::label`]), for stable metrics.
pub const STUN_REJECT_REASONS: [&str; 11] = [
    "malformed",
    "not_binding_request",
    "missing_fingerprint",
    "bad_fingerprint",
    "missing_username",
    "unknown_ufrag",
    "remote_ufrag_mismatch",
    "missing_integrity",
    "wrong_password",
    "missing_priority",
    "buffer_too_small",
];

/// Every reason a DTLS session can fail ([`super::dtls::DtlsError::label`]).
pub const DTLS_FAIL_REASONS: [&str; 7] = [
    "fingerprint_mismatch",
    "no_peer_certificate",
    "no_srtp_profile",
    "alert",
    "timeout",
    "protocol",
    "setup",
];

/// What the transport counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// STUN requests answered (success, or an authenticated 487/420 error).
    pub stun_answered: u64,
    /// STUN datagrams not answered, by reason (every one of [`STUN_REJECT_REASONS`] present;
    /// Binding indications, which need no answer, count as `not_binding_request`).
    pub stun_rejected: BTreeMap<&'static str, u64>,
    /// DTLS datagrams from an address no check of any endpoint passed from.
    pub dtls_dropped: u64,
    /// DTLS handshakes completed (keys exported, the peer's certificate matched).
    pub dtls_handshakes: u64,
    /// DTLS sessions failed, by reason (every one of [`DTLS_FAIL_REASONS`] present).
    pub dtls_failed: BTreeMap<&'static str, u64>,
    /// Nominated addresses whose consent expired.
    pub consent_expired: u64,
    /// Datagrams the media socket refused to send (counted by the task).
    pub send_failed: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            stun_answered: 0,
            stun_rejected: STUN_REJECT_REASONS.iter().map(|&r| (r, 0)).collect(),
            dtls_dropped: 0,
            dtls_handshakes: 0,
            dtls_failed: DTLS_FAIL_REASONS.iter().map(|&r| (r, 0)).collect(),
            consent_expired: 0,
            send_failed: 0,
        }
    }
}

impl Stats {
    /// STUN datagrams not answered, over all reasons.
    pub fn stun_rejected_total(&self) -> u64 {
        self.stun_rejected.values().sum()
    }

    /// DTLS sessions failed, over all reasons.
    pub fn dtls_failed_total(&self) -> u64 {
        self.dtls_failed.values().sum()
    }
}

/// One WebRTC endpoint's transport.
#[derive(Debug)]
struct Endpoint {
    ice: IceLite,
    ufrag: String,
    fingerprint: Fingerprint,
    /// Made with the first DTLS datagram from a checked address.
    dtls: Option<DtlsSession>,
    /// Addresses a check passed from, least recently checked first (at most `MAX_PAIRS`).
    checked: Vec<SocketAddr>,
    /// Where its latest DTLS datagram came from: where flights go.
    dtls_peer: Option<SocketAddr>,
    /// The nominated address while it has consent.
    nominated: Option<SocketAddr>,
    /// Some address was nominated once (so no address now means expired, not checking).
    ever_nominated: bool,
    /// The handshake exported keys.
    keyed: bool,
    /// Exported keys not reported yet.
    keys: Option<SrtpKeys>,
    failed: bool,
    /// The peer sent close_notify.
    closed: bool,
    /// The state and address last reported.
    reported: (WebRtcState, Option<SocketAddr>),
}

impl Endpoint {
    fn state(&self) -> WebRtcState {
        if self.failed {
            WebRtcState::Failed
        } else if self.closed || (self.nominated.is_none() && self.ever_nominated) {
            WebRtcState::Expired
        } else if self.nominated.is_none() {
            WebRtcState::Checking
        } else if self.keyed {
            WebRtcState::Connected
        } else {
            WebRtcState::Handshaking
        }
    }

    /// The address the table should have for it.
    fn table_addr(&self) -> Option<SocketAddr> {
        self.nominated
            .filter(|_| self.state() == WebRtcState::Connected)
    }

    /// Remembers that a check from `from` passed (so its DTLS is the endpoint's).
    fn checked_from(
        &mut self,
        from: SocketAddr,
        uid: EndpointUid,
        by_addr: &mut FxHashMap<SocketAddr, EndpointUid>,
    ) {
        if let Some(i) = self.checked.iter().position(|&a| a == from) {
            let a = self.checked.remove(i);
            self.checked.push(a);
        } else {
            if self.checked.len() >= ice::MAX_PAIRS {
                let keep = [self.nominated, self.dtls_peer];
                if let Some(i) = self.checked.iter().position(|a| !keep.contains(&Some(*a))) {
                    let gone = self.checked.remove(i);
                    if by_addr.get(&gone) == Some(&uid) {
                        by_addr.remove(&gone);
                    }
                }
            }
            self.checked.push(from);
        }
        by_addr.insert(from, uid);
    }
}

/// What the transport has for the outside.
#[derive(Debug, Default)]
struct Out {
    transmits: VecDeque<Transmit>,
    updates: VecDeque<Update>,
    stats: Stats,
}

impl Out {
    fn reject(&mut self, e: IceError) {
        *self.stats.stun_rejected.entry(e.label()).or_default() += 1;
    }

    /// Collects what `ep`'s agent and session produced, and reports a change of its state.
    fn drive(&mut self, uid: EndpointUid, ep: &mut Endpoint) {
        while let Some(ev) = ep.ice.poll_event() {
            match ev {
                IceEvent::Nominated(a) => {
                    ep.nominated = Some(a);
                    ep.ever_nominated = true;
                }
                IceEvent::ConsentExpired(_) => {
                    ep.nominated = None;
                    self.stats.consent_expired += 1;
                }
            }
        }
        if let Some(s) = ep.dtls.as_mut() {
            while let Some(data) = s.poll_transmit() {
                if let Some(to) = ep.dtls_peer {
                    self.transmits.push_back(Transmit { to, data });
                }
            }
            while let Some(ev) = s.poll_event() {
                match ev {
                    DtlsEvent::Connected { keys, .. } => {
                        ep.keyed = true;
                        ep.keys = Some(keys);
                        self.stats.dtls_handshakes += 1;
                    }
                    DtlsEvent::Failed(e) => {
                        ep.failed = true;
                        *self.stats.dtls_failed.entry(e.label()).or_default() += 1;
                    }
                    DtlsEvent::Closed => ep.closed = true,
                }
            }
        }
        let now = (ep.state(), ep.table_addr());
        if now != ep.reported {
            ep.reported = now;
            let keys = if now.0 == WebRtcState::Connected {
                ep.keys.take()
            } else {
                None
            };
            self.updates.push_back(Update {
                uid,
                state: now.0,
                addr: now.1,
                keys,
            });
        }
    }
}

/// The WebRTC transport of one bridge; see the module docs.
#[derive(Debug)]
pub struct Transport {
    cert: Arc<Certificate>,
    consent_ms: u64,
    /// Time zero of the agents' millisecond clock.
    epoch: Instant,
    endpoints: FxHashMap<EndpointUid, Endpoint>,
    by_ufrag: FxHashMap<String, EndpointUid>,
    /// Addresses a check passed from, and whose they are.
    by_addr: FxHashMap<SocketAddr, EndpointUid>,
    out: Out,
}

impl Transport {
    /// A transport using the bridge's certificate, with consent lasting `consent_ms` (normally
    /// [`ice::CONSENT_TIMEOUT_MS`]); `now` starts its clock.
    pub fn new(cert: Arc<Certificate>, consent_ms: u64, now: Instant) -> Self {
        Self {
            cert,
            consent_ms,
            epoch: now,
            endpoints: FxHashMap::default(),
            by_ufrag: FxHashMap::default(),
            by_addr: FxHashMap::default(),
            out: Out::default(),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// WebRTC endpoints it has.
    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }

    /// What it counted.
    pub fn stats(&self) -> &Stats {
        &self.out.stats
    }

    /// Counts a datagram the media socket refused to send.
    pub fn count_send_failed(&mut self) {
        self.out.stats.send_failed += 1;
    }

    /// Takes a command from the control path.
    pub fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Add(e) => {
                // Validated by the state (credentials, unique ufrag); refused here only if not.
                let ice = match IceLite::new(&e.local_ufrag, &e.local_pwd, Some(&e.remote_ufrag)) {
                    Ok(ice) => ice.with_consent_timeout(self.consent_ms),
                    Err(err) => {
                        tracing::error!(uid = e.uid, "WebRTC endpoint not added: {err}");
                        return;
                    }
                };
                self.remove(e.uid);
                if let Some(other) = self.by_ufrag.insert(e.local_ufrag.clone(), e.uid) {
                    self.remove(other);
                    self.by_ufrag.insert(e.local_ufrag.clone(), e.uid);
                }
                self.endpoints.insert(
                    e.uid,
                    Endpoint {
                        ice,
                        ufrag: e.local_ufrag,
                        fingerprint: e.fingerprint,
                        dtls: None,
                        checked: Vec::new(),
                        dtls_peer: None,
                        nominated: None,
                        ever_nominated: false,
                        keyed: false,
                        keys: None,
                        failed: false,
                        closed: false,
                        reported: (WebRtcState::Checking, None),
                    },
                );
            }
            Command::Remove(uid) => self.remove(uid),
            Command::Send(t) => self.out.transmits.push_back(t),
        }
    }

    /// Drops endpoint `uid`'s agent and session (a connected session says close_notify).
    fn remove(&mut self, uid: EndpointUid) {
        let Some(mut ep) = self.endpoints.remove(&uid) else {
            return;
        };
        if self.by_ufrag.get(&ep.ufrag) == Some(&uid) {
            self.by_ufrag.remove(&ep.ufrag);
        }
        for a in &ep.checked {
            if self.by_addr.get(a) == Some(&uid) {
                self.by_addr.remove(a);
            }
        }
        if let (Some(s), Some(to)) = (ep.dtls.as_mut(), ep.dtls_peer) {
            s.close();
            while let Some(data) = s.poll_transmit() {
                self.out.transmits.push_back(Transmit { to, data });
            }
        }
    }

    /// Handles a STUN or DTLS datagram that arrived on the media port from `from` at `now`;
    /// anything else is ignored.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        match Kind::of(data) {
            Some(Kind::Stun) => self.handle_stun(from, data, now),
            Some(Kind::Dtls) => self.handle_dtls(from, data, now),
            None => {}
        }
    }

    fn handle_stun(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        let now_ms = self.ms(now);
        let uid = match ice::local_ufrag_of(data) {
            Some(ufrag) => match self.by_ufrag.get(ufrag) {
                Some(&uid) => uid,
                None => return self.out.reject(IceError::UnknownUfrag),
            },
            None => return self.out.reject(unroutable(data)),
        };
        let ep = self
            .endpoints
            .get_mut(&uid)
            .expect("every ufrag has its endpoint");
        let mut buf = [0u8; ice::RESPONSE_BUF_LEN];
        match ep.ice.handle_stun(data, from, now_ms, &mut buf) {
            Ok(reply) => {
                self.out.stats.stun_answered += 1;
                self.out.transmits.push_back(Transmit {
                    to: from,
                    data: buf[..reply.response_len()].to_vec(),
                });
                if let Reply::Success(_) = reply {
                    ep.checked_from(from, uid, &mut self.by_addr);
                }
            }
            Err(e) => self.out.reject(e),
        }
        self.out.drive(uid, ep);
    }

    fn handle_dtls(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        let Some(&uid) = self.by_addr.get(&from) else {
            self.out.stats.dtls_dropped += 1;
            return;
        };
        let ep = self
            .endpoints
            .get_mut(&uid)
            .expect("every checked address has its endpoint");
        let cert = &self.cert;
        let session = ep
            .dtls
            .get_or_insert_with(|| DtlsSession::new(cert, ep.fingerprint.clone(), now));
        ep.dtls_peer = Some(from);
        session.handle_packet(data, now);
        self.out.drive(uid, ep);
    }

    /// When [`Self::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.endpoints
            .values()
            .flat_map(|ep| {
                let consent = ep
                    .ice
                    .poll_timeout()
                    .map(|ms| self.epoch + Duration::from_millis(ms));
                [
                    consent,
                    ep.dtls.as_ref().and_then(DtlsSession::poll_timeout),
                ]
            })
            .flatten()
            .min()
    }

    /// Advances every endpoint whose timer is due to `now`: consent expiry, DTLS
    /// retransmissions and handshake deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now_ms = self.ms(now);
        for (&uid, ep) in &mut self.endpoints {
            let mut due = false;
            if ep.ice.poll_timeout().is_some_and(|t| t <= now_ms) {
                ep.ice.handle_timeout(now_ms);
                due = true;
            }
            if let Some(s) = ep.dtls.as_mut()
                && s.poll_timeout().is_some_and(|t| t <= now)
            {
                s.handle_timeout(now);
                due = true;
            }
            if due {
                self.out.drive(uid, ep);
            }
        }
    }

    /// The next datagram to send from the media port.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// The next change of an endpoint for the bridge's table.
    pub fn poll_update(&mut self) -> Option<Update> {
        self.out.updates.pop_front()
    }
}

/// Why a STUN datagram that names no ufrag is refused.
fn unroutable(data: &[u8]) -> IceError {
    match Message::parse(data) {
        Err(e) => IceError::Malformed(e),
        Ok(m) if !m.is_binding_request() => IceError::NotBindingRequest,
        Ok(_) => IceError::MissingUsername,
    }
}

#[cfg(test)]
mod tests {
    use dimpl::certificate::generate_self_signed_certificate;
    use dimpl::{Dtls, Output};

    use super::*;
    use crate::webrtc::dtls::HashFunction;
    use crate::webrtc::stun::{self, Class, IntegrityKey, MessageWriter, TransactionId};

    const UFRAG: &str = "bRdg";
    const PWD: &str = "asd88fgpdd777uzjYhagZg";
    const PEER: &str = "evtj";

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    /// A browser's check: USERNAME, PRIORITY, ICE-CONTROLLING, maybe USE-CANDIDATE,
    /// MESSAGE-INTEGRITY with `pwd`, FINGERPRINT.
    fn check(username: &str, pwd: &str, nominate: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 256];
        let mut w = MessageWriter::new(
            &mut buf,
            Class::Request,
            stun::BINDING,
            TransactionId::random(),
        )
        .unwrap();
        w.username(username).unwrap();
        w.priority(1_853_817_087).unwrap();
        w.ice_controlling(42).unwrap();
        if nominate {
            w.use_candidate().unwrap();
        }
        w.message_integrity(&IntegrityKey::short_term(pwd)).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// A transport with one endpoint (uid 7) expecting `client_fp`; consent 1 s.
    fn transport(client_fp: Fingerprint, now: Instant) -> Transport {
        let cert = Arc::new(Certificate::generate().unwrap());
        let mut t = Transport::new(cert, 1_000, now);
        t.command(Command::Add(NewEndpoint {
            uid: 7,
            local_ufrag: UFRAG.into(),
            local_pwd: PWD.into(),
            remote_ufrag: PEER.into(),
            fingerprint: client_fp,
        }));
        t
    }

    fn transmits(t: &mut Transport) -> Vec<Transmit> {
        std::iter::from_fn(|| t.poll_transmit()).collect()
    }

    fn updates(t: &mut Transport) -> Vec<Update> {
        std::iter::from_fn(|| t.poll_update()).collect()
    }

    fn client(now: Instant) -> (Dtls, Fingerprint) {
        let cert = generate_self_signed_certificate().unwrap();
        let fp = Fingerprint::of(HashFunction::Sha256, &cert.certificate);
        let mut c = Dtls::new_auto(Arc::new(dimpl::Config::default()), cert, now);
        c.set_active(true);
        (c, fp)
    }

    /// Runs the handshake between `c` at `from` and the transport; returns the exported
    /// material the client saw.
    fn handshake(t: &mut Transport, c: &mut Dtls, from: SocketAddr, now: &mut Instant) -> bool {
        let mut buf = vec![0u8; 2048];
        let mut connected = false;
        for _ in 0..50 {
            c.handle_timeout(*now).unwrap();
            t.handle_timeout(*now);
            loop {
                match c.poll_output(&mut buf) {
                    Output::Packet(p) => {
                        let p = p.to_vec();
                        t.handle_datagram(from, &p, *now);
                    }
                    Output::Connected => connected = true,
                    Output::Timeout(_) => break,
                    _ => {}
                }
            }
            for tx in transmits(t) {
                assert_eq!(tx.to, from);
                let _ = c.handle_packet(&tx.data);
            }
            if connected && t.endpoints[&7].keyed {
                break;
            }
            *now += Duration::from_millis(10);
        }
        connected
    }

    #[test]
    fn check_nominate_handshake_connect() {
        let mut now = Instant::now();
        let (mut c, fp) = client(now);
        let mut t = transport(fp, now);
        let from = addr(5000);

        // DTLS before any check passed: dropped, no session.
        t.handle_datagram(from, &[22, 0xfe, 0xfd, 0, 0], now);
        assert_eq!(t.stats().dtls_dropped, 1);
        assert!(t.endpoints[&7].dtls.is_none());

        // A check without USE-CANDIDATE is answered and makes the address a DTLS source.
        t.handle_datagram(from, &check("bRdg:evtj", PWD, false), now);
        let [answer] = &transmits(&mut t)[..] else {
            panic!("one answer")
        };
        assert_eq!(answer.to, from);
        let m = Message::parse(&answer.data).unwrap();
        assert_eq!(m.class(), Class::SuccessResponse);
        assert_eq!(m.xor_mapped_address(), Some(from));
        assert_eq!(updates(&mut t), []);

        // Nomination: handshaking.
        t.handle_datagram(from, &check("bRdg:evtj", PWD, true), now);
        assert_eq!(transmits(&mut t).len(), 1);
        assert_eq!(
            updates(&mut t),
            [Update {
                uid: 7,
                state: WebRtcState::Handshaking,
                addr: None,
                keys: None
            }]
        );

        assert!(handshake(&mut t, &mut c, from, &mut now));
        let [u] = &updates(&mut t)[..] else {
            panic!("one update")
        };
        assert_eq!(
            (u.uid, u.state, u.addr),
            (7, WebRtcState::Connected, Some(from))
        );
        assert!(
            u.keys.is_some(),
            "the first connected update carries the keys"
        );
        assert_eq!(t.stats().dtls_handshakes, 1);
        assert_eq!(t.stats().stun_answered, 2);
        assert_eq!(t.stats().stun_rejected_total(), 0);

        // Removal: close_notify to the client, and its checks are unknown from then on.
        t.command(Command::Remove(7));
        let closing = transmits(&mut t);
        assert_eq!(closing.len(), 1);
        assert_eq!(closing[0].to, from);
        t.handle_datagram(from, &check("bRdg:evtj", PWD, true), now);
        assert!(transmits(&mut t).is_empty());
        assert_eq!(t.stats().stun_rejected["unknown_ufrag"], 1);
        t.handle_datagram(from, &[22, 0xfe, 0xfd, 0, 0], now);
        assert_eq!(t.stats().dtls_dropped, 2);
        assert_eq!(t.endpoints(), 0);
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn refused_checks_get_no_answer_and_are_counted() {
        let now = Instant::now();
        let (_, fp) = client(now);
        let mut t = transport(fp, now);
        let from = addr(5000);
        t.handle_datagram(
            from,
            &check("bRdg:evtj", "wrongwrongwrongwrongwr", true),
            now,
        );
        t.handle_datagram(from, &check("XXXX:evtj", PWD, true), now);
        t.handle_datagram(from, &check("bRdg:zzzz", PWD, true), now);
        t.handle_datagram(from, b"\x00\x01\x00\x00garbage", now);
        t.handle_datagram(from, b"\x80\x60 rtp is not ours", now);
        assert!(transmits(&mut t).is_empty());
        assert_eq!(updates(&mut t), []);
        let s = t.stats();
        assert_eq!(s.stun_rejected["wrong_password"], 1);
        assert_eq!(s.stun_rejected["unknown_ufrag"], 1);
        assert_eq!(s.stun_rejected["remote_ufrag_mismatch"], 1);
        assert_eq!(s.stun_rejected["malformed"], 1);
        assert_eq!(s.stun_rejected_total(), 4);
        assert_eq!(s.stun_rejected.len(), STUN_REJECT_REASONS.len());
        // No address passed a check: its DTLS goes nowhere.
        t.handle_datagram(from, &[22, 0xfe, 0xfd], now);
        assert_eq!(t.stats().dtls_dropped, 1);
    }

    #[test]
    fn consent_expires_and_is_restored() {
        let mut now = Instant::now();
        let (mut c, fp) = client(now);
        let mut t = transport(fp, now);
        let from = addr(5000);
        let checked_at = now;
        t.handle_datagram(from, &check("bRdg:evtj", PWD, true), now);
        assert!(handshake(&mut t, &mut c, from, &mut now));
        updates(&mut t);
        transmits(&mut t);

        // The consent deadline is the earliest timer (the connected session's is later).
        assert_eq!(
            t.poll_timeout(),
            Some(checked_at + Duration::from_millis(1_000))
        );
        // Nothing before the deadline; at it, the address goes.
        t.handle_timeout(checked_at + Duration::from_millis(500));
        assert_eq!(updates(&mut t), []);
        now = checked_at + Duration::from_millis(1_000);
        t.handle_timeout(now);
        assert_eq!(
            updates(&mut t),
            [Update {
                uid: 7,
                state: WebRtcState::Expired,
                addr: None,
                keys: None
            }]
        );
        assert_eq!(t.stats().consent_expired, 1);

        // A valid check restores it, with the keys it had (no new handshake).
        t.handle_datagram(from, &check("bRdg:evtj", PWD, false), now);
        assert_eq!(
            updates(&mut t),
            [Update {
                uid: 7,
                state: WebRtcState::Connected,
                addr: Some(from),
                keys: None
            }]
        );
    }

    #[test]
    fn a_certificate_that_does_not_match_fails_the_endpoint() {
        let mut now = Instant::now();
        let (mut c, _) = client(now);
        let other = generate_self_signed_certificate().unwrap();
        let wrong = Fingerprint::of(HashFunction::Sha256, &other.certificate);
        let mut t = transport(wrong, now);
        let from = addr(5000);
        t.handle_datagram(from, &check("bRdg:evtj", PWD, true), now);
        assert_eq!(updates(&mut t)[0].state, WebRtcState::Handshaking);
        handshake(&mut t, &mut c, from, &mut now);
        assert_eq!(
            updates(&mut t),
            [Update {
                uid: 7,
                state: WebRtcState::Failed,
                addr: None,
                keys: None
            }]
        );
        assert_eq!(t.stats().dtls_failed["fingerprint_mismatch"], 1);
        assert_eq!(t.stats().dtls_failed_total(), 1);
        assert_eq!(t.stats().dtls_handshakes, 0);
        // Checks are still answered (consent), but the endpoint stays failed.
        t.handle_datagram(from, &check("bRdg:evtj", PWD, true), now);
        assert_eq!(transmits(&mut t).len(), 1);
        assert_eq!(updates(&mut t), []);
    }

    #[test]
    fn dtls_sources_are_bounded_per_endpoint() {
        let now = Instant::now();
        let (_, fp) = client(now);
        let mut t = transport(fp, now);
        for port in 1..=20 {
            t.handle_datagram(addr(port), &check("bRdg:evtj", PWD, port == 1), now);
        }
        assert_eq!(t.by_addr.len(), ice::MAX_PAIRS);
        // The nominated address stays a DTLS source, however long ago it was checked.
        assert!(t.by_addr.contains_key(&addr(1)));
        assert!(!t.by_addr.contains_key(&addr(2)));
        assert_eq!(t.endpoints[&7].checked.len(), ice::MAX_PAIRS);
    }

    #[test]
    fn state_names() {
        let names: Vec<_> = [
            WebRtcState::Checking,
            WebRtcState::Handshaking,
            WebRtcState::Connected,
            WebRtcState::Failed,
            WebRtcState::Expired,
        ]
        .map(WebRtcState::name)
        .into();
        assert_eq!(
            names,
            ["checking", "handshaking", "connected", "failed", "expired"]
        );
    }
}
