//! The ICE-lite agent of one WebRTC endpoint (RFC 8445 section 2.5 lite implementation, consent
//! freshness RFC 7675), sans-IO and in virtual time. It owns the endpoint's local ICE
//! credentials, answers the peer's connectivity checks, remembers which remote addresses passed
//! one, decides which of them is the endpoint's address (nomination) and when that address loses
//! consent. It sends nothing on its own: a lite agent only answers.
//!
//! The transport task drives it: a STUN datagram from the media port goes to the agent whose
//! local ufrag [`local_ufrag_of`] names (a datagram naming no known ufrag is dropped and counted
//! as [`IceError::UnknownUfrag`] there), [`IceLite::handle_stun`] writes the answer into the
//! caller's buffer, which the caller sends back from the media port to the source address;
//! [`IceLite::poll_event`] then says whether the endpoint's address changed, and
//! [`IceLite::handle_timeout`] at [`IceLite::poll_timeout`] expires consent.
//!
//! Time is milliseconds on the caller's monotonic clock (`u64`, never wrapping), the same clock
//! for every call.
//!
//! What the bridge does with the events: on [`IceEvent::Nominated`] it latches the address as the
//! endpoint's (a table change to the workers: RTP/RTCP from that address is the endpoint's, media
//! for the endpoint goes there); on [`IceEvent::ConsentExpired`] it removes the latched address,
//! so the endpoint stops receiving (and its packets from that address are no longer accepted),
//! and counts it. A later valid check from the same address restores it with a new
//! [`IceEvent::Nominated`]. An ICE restart (new credentials in a new offer) is a new agent.

use std::collections::VecDeque;
use std::net::SocketAddr;

use aws_lc_rs::rand;

use super::stun::{self, IntegrityKey, Message, StunError};

/// How long the nominated address keeps consent without a valid check (RFC 7675 section 5.1).
/// Browsers send a check about every 5 s (2.5 s while the pair is being selected), so several
/// lost checks in a row are tolerated.
pub const CONSENT_TIMEOUT_MS: u64 = 30_000;
/// Most remote addresses the agent remembers as having passed a check; a new one replaces the
/// least recently checked that is not nominated. A browser checks from a few candidates (host
/// IPv4/IPv6, server reflexive, relayed), so this bounds what a peer can make the agent hold.
pub const MAX_PAIRS: usize = 8;
/// A buffer of this many bytes holds any answer the agent writes (an IPv6 success response or
/// a 487 is 76 bytes, the largest, a 420 naming one attribute, 88).
pub const RESPONSE_BUF_LEN: usize = 96;
/// Shortest ufrag RFC 8839 section 5.4 allows.
pub const MIN_UFRAG_LEN: usize = 4;
/// Shortest ice-pwd RFC 8839 section 5.4 allows.
pub const MIN_PWD_LEN: usize = 22;
/// Longest ufrag or ice-pwd RFC 8839 section 5.4 allows.
pub const MAX_CREDENTIAL_LEN: usize = 256;
/// Length of the ufrags [`IceLite::random`] draws (48 bits of randomness).
const RANDOM_UFRAG_LEN: usize = 8;
/// Length of the passwords [`IceLite::random`] draws (144 bits of randomness).
const RANDOM_PWD_LEN: usize = 24;
/// The 64 ice-chars (RFC 8839: ALPHA / DIGIT / "+" / "/"); a random byte's low 6 bits pick one
/// without bias.
const ICE_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The local ufrag of a STUN datagram (the part of USERNAME before ':'), which tells the
/// transport task whose agent should handle it. `None` when the datagram is not a well-formed
/// STUN message or carries no `ufrag:ufrag` USERNAME. Parsing allocates nothing and does no
/// cryptography; the chosen agent verifies everything.
pub fn local_ufrag_of(packet: &[u8]) -> Option<&str> {
    Message::parse(packet).ok()?.local_ufrag()
}

/// Checks a ufrag: 4-256 ice-chars (RFC 8839 section 5.4).
pub fn check_ufrag(ufrag: &str) -> Result<(), CredentialsError> {
    check_ice_chars(ufrag, MIN_UFRAG_LEN, CredentialsError::UfragLength)
}

/// Checks an ice-pwd: 22-256 ice-chars (RFC 8839 section 5.4).
pub fn check_pwd(pwd: &str) -> Result<(), CredentialsError> {
    check_ice_chars(pwd, MIN_PWD_LEN, CredentialsError::PwdLength)
}

/// Why a pair of ICE credentials is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// The ufrag is not 4-256 characters.
    #[error("ufrag must be 4 to 256 characters")]
    UfragLength,
    /// The password is not 22-256 characters.
    #[error("ice-pwd must be 22 to 256 characters")]
    PwdLength,
    /// A character is not an ice-char (letter, digit, '+', '/').
    #[error("ICE credentials may only hold letters, digits, '+' and '/'")]
    NotIceChar,
}

/// Why a STUN datagram got no success response. Every variant is meant to be counted (see
/// [`IceError::label`]); none is logged per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IceError {
    /// Not a well-formed STUN message.
    #[error("malformed STUN: {0}")]
    Malformed(#[from] StunError),
    /// Well-formed STUN, but not a Binding request (a response, or a Binding indication:
    /// keepalives, which need no answer).
    #[error("not a Binding request")]
    NotBindingRequest,
    /// No FINGERPRINT (ICE requires it, RFC 8445 section 7.2.2).
    #[error("no FINGERPRINT")]
    MissingFingerprint,
    /// FINGERPRINT does not match.
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
    /// No USERNAME, or one that is not `ufrag:ufrag`.
    #[error("no ICE USERNAME")]
    MissingUsername,
    /// USERNAME names another local ufrag: the check is not for this endpoint.
    #[error("unknown ufrag")]
    UnknownUfrag,
    /// USERNAME's remote part is not the peer's ufrag from the offer.
    #[error("remote ufrag does not match the offer")]
    RemoteUfragMismatch,
    /// No MESSAGE-INTEGRITY.
    #[error("no MESSAGE-INTEGRITY")]
    MissingIntegrity,
    /// MESSAGE-INTEGRITY does not verify with the local ice-pwd.
    #[error("wrong password (MESSAGE-INTEGRITY does not verify)")]
    WrongPassword,
    /// An authentic check without PRIORITY (RFC 8445 section 7.1.1 requires it).
    #[error("no PRIORITY")]
    MissingPriority,
    /// The caller's buffer cannot hold the answer (see [`RESPONSE_BUF_LEN`]).
    #[error("response buffer too small")]
    BufferTooSmall,
}

impl IceError {
    /// A short, stable name for a metric label (e.g. `stun_dropped_total{reason="..."}`).
    pub fn label(&self) -> &'static str {
        match self {
            IceError::Malformed(_) => "malformed",
            IceError::NotBindingRequest => "not_binding_request",
            IceError::MissingFingerprint => "missing_fingerprint",
            IceError::BadFingerprint => "bad_fingerprint",
            IceError::MissingUsername => "missing_username",
            IceError::UnknownUfrag => "unknown_ufrag",
            IceError::RemoteUfragMismatch => "remote_ufrag_mismatch",
            IceError::MissingIntegrity => "missing_integrity",
            IceError::WrongPassword => "wrong_password",
            IceError::MissingPriority => "missing_priority",
            IceError::BufferTooSmall => "buffer_too_small",
        }
    }
}

/// What the agent wrote into the caller's buffer for an authentic check: send `buf[..len]` back
/// to the check's source address, from the port it arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A Binding success response of this many bytes: the check passed.
    Success(usize),
    /// A Binding error response, authenticated like a success: 487 (Role Conflict) when the
    /// peer claims the controlled role (a lite agent is always controlled, so the full peer must
    /// control, RFC 8445 section 6.1.1; on 487 it switches), or 420 (Unknown Attribute) when the
    /// check carries a comprehension-required attribute we do not know. The check did not pass.
    Error {
        /// The ERROR-CODE sent.
        code: u16,
        /// Length of the response in bytes.
        len: usize,
    },
}

impl Reply {
    /// Length of the response in the caller's buffer.
    pub fn response_len(&self) -> usize {
        match *self {
            Reply::Success(len) | Reply::Error { len, .. } => len,
        }
    }
}

/// A change of the endpoint's address, for the bridge to turn into a table change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceEvent {
    /// The endpoint's address is now this one (replacing any earlier one): the first
    /// nomination, a nomination with a higher priority than the current one, or a valid check
    /// restoring consent that had expired.
    Nominated(SocketAddr),
    /// The nominated address had no valid check for [`CONSENT_TIMEOUT_MS`]: the endpoint has no
    /// address until a valid check arrives again.
    ConsentExpired(SocketAddr),
}

/// A remote address that passed a check.
#[derive(Debug, Clone, Copy)]
struct Pair {
    remote: SocketAddr,
    last_valid_ms: u64,
}

/// The nominated pair.
#[derive(Debug, Clone, Copy)]
struct Nomination {
    remote: SocketAddr,
    /// PRIORITY of the latest check that nominated it.
    priority: u32,
    last_valid_ms: u64,
    /// False once consent expired, until a valid check from `remote` restores it.
    live: bool,
}

/// The ICE-lite agent of one endpoint (always in the controlled role).
///
/// Nomination: a valid check with USE-CANDIDATE nominates its source address. When one address
/// is nominated and alive, a nomination from another address replaces it only with a strictly
/// higher PRIORITY (so, of several nominations, the highest priority wins, and a later one with
/// a higher priority switches); a lower or equal one is answered but changes nothing. Once the
/// current address's consent has expired, any nomination replaces it. A peer that moves to a
/// lower-priority path without an ICE restart is therefore followed after at most
/// [`CONSENT_TIMEOUT_MS`]; browsers restart ICE on a network change.
#[derive(Debug)]
pub struct IceLite {
    local_ufrag: String,
    local_pwd: String,
    key: IntegrityKey,
    remote_ufrag: Option<String>,
    pairs: Vec<Pair>,
    nominated: Option<Nomination>,
    events: VecDeque<IceEvent>,
    /// How long consent lasts without a valid check ([`CONSENT_TIMEOUT_MS`] unless a test
    /// shortens it).
    consent_ms: u64,
}

/// Checks that `s` is `min..=256` ice-chars.
fn check_ice_chars(s: &str, min: usize, length: CredentialsError) -> Result<(), CredentialsError> {
    if !(min..=MAX_CREDENTIAL_LEN).contains(&s.len()) {
        return Err(length);
    }
    if !s.bytes().all(|b| ICE_CHARS.contains(&b)) {
        return Err(CredentialsError::NotIceChar);
    }
    Ok(())
}

/// `n` random ice-chars.
fn random_ice_string(n: usize) -> String {
    let mut bytes = [0u8; RANDOM_PWD_LEN];
    let bytes = &mut bytes[..n];
    rand::fill(bytes).expect("system random generator");
    bytes
        .iter()
        .map(|b| char::from(ICE_CHARS[usize::from(b & 63)]))
        .collect()
}

impl IceLite {
    /// An agent with the given local credentials (for the SDP answer's `a=ice-ufrag` and
    /// `a=ice-pwd`) and, when known, the peer's ufrag from the offer (then checks must name it
    /// after the ':'; `None` accepts any). The caller keeps local ufrags unique per bridge, since
    /// they route checks to agents.
    pub fn new(
        local_ufrag: &str,
        local_pwd: &str,
        remote_ufrag: Option<&str>,
    ) -> Result<Self, CredentialsError> {
        check_ufrag(local_ufrag)?;
        check_pwd(local_pwd)?;
        Ok(IceLite {
            local_ufrag: local_ufrag.to_owned(),
            local_pwd: local_pwd.to_owned(),
            key: IntegrityKey::short_term(local_pwd),
            remote_ufrag: remote_ufrag.map(str::to_owned),
            pairs: Vec::with_capacity(MAX_PAIRS),
            nominated: None,
            events: VecDeque::with_capacity(4),
            consent_ms: CONSENT_TIMEOUT_MS,
        })
    }

    /// The same agent with consent lasting `ms` instead of [`CONSENT_TIMEOUT_MS`] (the bridge's
    /// hidden `--ice-consent-ms`, for tests that cannot wait 30 s; at least 1 ms).
    pub fn with_consent_timeout(mut self, ms: u64) -> Self {
        self.consent_ms = ms.max(1);
        self
    }

    /// An agent with fresh random local credentials (an 8-character ufrag, a 24-character
    /// password, drawn from the system's secure generator). On the unlikely clash of the ufrag
    /// with another endpoint's, the caller draws again.
    pub fn random(remote_ufrag: Option<&str>) -> Self {
        let ufrag = random_ice_string(RANDOM_UFRAG_LEN);
        let pwd = random_ice_string(RANDOM_PWD_LEN);
        IceLite::new(&ufrag, &pwd, remote_ufrag).expect("random credentials are valid")
    }

    /// The local ufrag (`a=ice-ufrag` of the answer).
    pub fn local_ufrag(&self) -> &str {
        &self.local_ufrag
    }

    /// The local password (`a=ice-pwd` of the answer), the MESSAGE-INTEGRITY key of checks.
    pub fn local_pwd(&self) -> &str {
        &self.local_pwd
    }

    /// The peer's ufrag, if the offer gave one.
    pub fn remote_ufrag(&self) -> Option<&str> {
        self.remote_ufrag.as_deref()
    }

    /// The endpoint's address: the nominated one while it has consent.
    pub fn nominated(&self) -> Option<SocketAddr> {
        self.nominated.filter(|n| n.live).map(|n| n.remote)
    }

    /// Whether media from `addr` is the endpoint's (it is the nominated address with consent).
    pub fn accepts_media_from(&self, addr: SocketAddr) -> bool {
        self.nominated() == Some(addr)
    }

    /// Handles one STUN datagram that arrived from `from` at `now_ms`. On an authentic check
    /// writes the answer into `out` (at least [`RESPONSE_BUF_LEN`] bytes) and says what it is;
    /// otherwise writes nothing and says why (count it). Unauthenticated datagrams are never
    /// answered, so garbage cannot make the media port a reflector; RFC 8489 would answer some of
    /// them with 400 or 401, which ICE peers do not need. Events may follow
    /// ([`Self::poll_event`]).
    pub fn handle_stun(
        &mut self,
        packet: &[u8],
        from: SocketAddr,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<Reply, IceError> {
        let msg = Message::parse(packet)?;
        self.handle_message(&msg, from, now_ms, out)
    }

    /// [`Self::handle_stun`] for a message the caller already parsed (e.g. to route it by
    /// [`Message::local_ufrag`]).
    pub fn handle_message(
        &mut self,
        msg: &Message<'_>,
        from: SocketAddr,
        now_ms: u64,
        out: &mut [u8],
    ) -> Result<Reply, IceError> {
        if !msg.is_binding_request() {
            return Err(IceError::NotBindingRequest);
        }
        // Cheapest checks first; the HMAC comes last.
        msg.verify_fingerprint().map_err(|e| match e {
            StunError::MissingFingerprint => IceError::MissingFingerprint,
            _ => IceError::BadFingerprint,
        })?;
        let (local, remote) = msg
            .username()
            .and_then(|u| u.split_once(':'))
            .ok_or(IceError::MissingUsername)?;
        if local != self.local_ufrag {
            return Err(IceError::UnknownUfrag);
        }
        if self.remote_ufrag.as_deref().is_some_and(|r| r != remote) {
            return Err(IceError::RemoteUfragMismatch);
        }
        msg.verify_integrity(&self.key).map_err(|e| match e {
            StunError::MissingIntegrity => IceError::MissingIntegrity,
            _ => IceError::WrongPassword,
        })?;

        let tid = msg.transaction_id();
        let too_small = |_| IceError::BufferTooSmall;
        if let Some(typ) = msg.unknown_comprehension_required() {
            let len =
                stun::write_binding_error(out, tid, 420, "Unknown Attribute", &[typ], &self.key)
                    .map_err(too_small)?;
            return Ok(Reply::Error { code: 420, len });
        }
        let priority = msg.priority().ok_or(IceError::MissingPriority)?;
        if msg.ice_controlled().is_some() {
            let len = stun::write_binding_error(out, tid, 487, "Role Conflict", &[], &self.key)
                .map_err(too_small)?;
            return Ok(Reply::Error { code: 487, len });
        }

        // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6: answer with the address
        // family the peer's candidate has.
        let mapped = SocketAddr::new(from.ip().to_canonical(), from.port());
        let len = stun::write_binding_success(out, tid, mapped, &self.key).map_err(too_small)?;
        self.valid_check(from, priority, msg.use_candidate(), now_ms);
        Ok(Reply::Success(len))
    }

    /// Records a check from `from` that passed.
    fn valid_check(&mut self, from: SocketAddr, priority: u32, use_candidate: bool, now_ms: u64) {
        match self.pairs.iter_mut().find(|p| p.remote == from) {
            Some(p) => p.last_valid_ms = now_ms,
            None => {
                if self.pairs.len() == MAX_PAIRS {
                    let nominated = self.nominated.map(|n| n.remote);
                    if let Some(i) = self
                        .pairs
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| Some(p.remote) != nominated)
                        .min_by_key(|(_, p)| p.last_valid_ms)
                        .map(|(i, _)| i)
                    {
                        self.pairs.swap_remove(i);
                    }
                }
                self.pairs.push(Pair {
                    remote: from,
                    last_valid_ms: now_ms,
                });
            }
        }

        if let Some(n) = &mut self.nominated
            && n.remote == from
        {
            n.last_valid_ms = now_ms;
            if use_candidate {
                n.priority = priority;
            }
            if !n.live {
                n.live = true;
                self.events.push_back(IceEvent::Nominated(from));
            }
            return;
        }
        if use_candidate
            && self
                .nominated
                .is_none_or(|n| !n.live || priority > n.priority)
        {
            self.nominated = Some(Nomination {
                remote: from,
                priority,
                last_valid_ms: now_ms,
                live: true,
            });
            self.events.push_back(IceEvent::Nominated(from));
        }
    }

    /// The next change of the endpoint's address, if any.
    pub fn poll_event(&mut self) -> Option<IceEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] has something to do: the nominated address's consent
    /// deadline. `None` while no address has consent.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.nominated
            .filter(|n| n.live)
            .map(|n| n.last_valid_ms.saturating_add(self.consent_ms))
    }

    /// Advances the agent to `now_ms`: expires the nominated address's consent when it had no
    /// valid check for [`CONSENT_TIMEOUT_MS`] ([`IceEvent::ConsentExpired`]), and forgets other
    /// addresses as stale.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let consent = self.consent_ms;
        let stale = |last: u64| now_ms.saturating_sub(last) >= consent;
        if let Some(n) = &mut self.nominated
            && n.live
            && stale(n.last_valid_ms)
        {
            n.live = false;
            self.events.push_back(IceEvent::ConsentExpired(n.remote));
        }
        let nominated = self.nominated.map(|n| n.remote);
        self.pairs
            .retain(|p| Some(p.remote) == nominated || !stale(p.last_valid_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrtc::stun::{Class, MessageWriter, TransactionId};

    const UFRAG: &str = "bRdg";
    const PWD: &str = "asd88fgpdd777uzjYhagZg";
    const PEER_UFRAG: &str = "evtj";

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// What a browser sends: a Binding request from the controlling side.
    struct Check<'a> {
        username: &'a str,
        pwd: &'a str,
        priority: Option<u32>,
        use_candidate: bool,
        controlled: bool,
        fingerprint: bool,
    }

    impl Default for Check<'_> {
        fn default() -> Self {
            Check {
                username: "bRdg:evtj",
                pwd: PWD,
                priority: Some(1_853_817_087),
                use_candidate: false,
                controlled: false,
                fingerprint: true,
            }
        }
    }

    impl Check<'_> {
        fn bytes(&self, tid: TransactionId) -> Vec<u8> {
            let mut buf = vec![0u8; 256];
            let mut w = MessageWriter::new(&mut buf, Class::Request, stun::BINDING, tid).unwrap();
            w.attribute(0xC057, &[0, 1, 0, 10]).unwrap(); // GOOG-NETWORK-INFO, as Chrome sends
            w.username(self.username).unwrap();
            if self.controlled {
                w.ice_controlled(7).unwrap();
            } else {
                w.ice_controlling(7).unwrap();
            }
            if self.use_candidate {
                w.use_candidate().unwrap();
            }
            if let Some(p) = self.priority {
                w.priority(p).unwrap();
            }
            w.message_integrity(&IntegrityKey::short_term(self.pwd))
                .unwrap();
            if self.fingerprint {
                w.fingerprint().unwrap();
            }
            let n = w.finish();
            buf.truncate(n);
            buf
        }
    }

    fn agent() -> IceLite {
        IceLite::new(UFRAG, PWD, Some(PEER_UFRAG)).unwrap()
    }

    /// Sends `check` from `from` at `now`; on success checks the response verifies and maps
    /// `from`.
    fn send(
        ice: &mut IceLite,
        check: &Check<'_>,
        from: SocketAddr,
        now: u64,
    ) -> Result<Reply, IceError> {
        let tid = TransactionId::random();
        let mut out = [0u8; RESPONSE_BUF_LEN];
        let reply = ice.handle_stun(&check.bytes(tid), from, now, &mut out)?;
        let resp = Message::parse(&out[..reply.response_len()]).unwrap();
        assert_eq!(resp.transaction_id(), tid);
        assert_eq!(resp.method(), stun::BINDING);
        resp.verify_integrity(&IntegrityKey::short_term(PWD))
            .unwrap();
        resp.verify_fingerprint().unwrap();
        if let Reply::Success(_) = reply {
            assert_eq!(resp.class(), Class::SuccessResponse);
            assert_eq!(
                resp.xor_mapped_address(),
                Some(SocketAddr::new(from.ip().to_canonical(), from.port()))
            );
        } else {
            assert_eq!(resp.class(), Class::ErrorResponse);
        }
        Ok(reply)
    }

    fn nominate(prio: u32) -> Check<'static> {
        Check {
            use_candidate: true,
            priority: Some(prio),
            ..Check::default()
        }
    }

    fn events(ice: &mut IceLite) -> Vec<IceEvent> {
        std::iter::from_fn(|| ice.poll_event()).collect()
    }

    #[test]
    fn valid_check_is_answered() {
        let mut ice = agent();
        let from = v4("192.0.2.10:50000");
        let reply = send(&mut ice, &Check::default(), from, 0).unwrap();
        assert!(matches!(reply, Reply::Success(n) if n == 20 + 12 + 24 + 8));
        // A check without USE-CANDIDATE does not nominate.
        assert_eq!(ice.nominated(), None);
        assert!(!ice.accepts_media_from(from));
        assert_eq!(ice.poll_event(), None);
        assert_eq!(ice.pairs.len(), 1);
    }

    #[test]
    fn local_ufrag_routes() {
        let pkt = Check::default().bytes(TransactionId::random());
        assert_eq!(local_ufrag_of(&pkt), Some(UFRAG));
        assert_eq!(local_ufrag_of(&pkt[..pkt.len() - 1]), None);
        assert_eq!(local_ufrag_of(b"\x80\x00 rtp"), None);
        let no_colon = Check {
            username: "bRdgevtj",
            ..Check::default()
        };
        assert_eq!(
            local_ufrag_of(&no_colon.bytes(TransactionId::random())),
            None
        );
    }

    #[test]
    fn refused_checks_get_no_answer() {
        let mut ice = agent();
        let from = v4("192.0.2.10:50000");
        let cases = [
            (
                Check {
                    pwd: "wrongwrongwrongwrongwr",
                    ..nominate(100)
                },
                IceError::WrongPassword,
            ),
            (
                Check {
                    username: "XXXX:evtj",
                    ..nominate(100)
                },
                IceError::UnknownUfrag,
            ),
            (
                Check {
                    username: "bRdg:zzzz",
                    ..nominate(100)
                },
                IceError::RemoteUfragMismatch,
            ),
            (
                Check {
                    username: "bRdg",
                    ..nominate(100)
                },
                IceError::MissingUsername,
            ),
            (
                Check {
                    fingerprint: false,
                    ..nominate(100)
                },
                IceError::MissingFingerprint,
            ),
            (
                Check {
                    priority: None,
                    ..nominate(100)
                },
                IceError::MissingPriority,
            ),
        ];
        for (check, err) in cases {
            let mut out = [0xAAu8; RESPONSE_BUF_LEN];
            let pkt = check.bytes(TransactionId::random());
            assert_eq!(ice.handle_stun(&pkt, from, 0, &mut out), Err(err));
            assert!(out.iter().all(|&b| b == 0xAA), "{err:?} wrote a response");
        }
        assert_eq!(IceError::WrongPassword.label(), "wrong_password");
        assert_eq!(IceError::UnknownUfrag.label(), "unknown_ufrag");

        // A flipped bit anywhere: the fingerprint catches it before the HMAC runs.
        let mut out = [0u8; RESPONSE_BUF_LEN];
        let mut pkt = nominate(100).bytes(TransactionId::random());
        pkt[33] ^= 0x01;
        assert_eq!(
            ice.handle_stun(&pkt, from, 0, &mut out),
            Err(IceError::BadFingerprint)
        );
        // Garbage and non-requests.
        assert!(matches!(
            ice.handle_stun(b"\x00\x01\x00\x00garbage!", from, 0, &mut out),
            Err(IceError::Malformed(_))
        ));
        let n = stun::write_binding_success(
            &mut out,
            TransactionId::random(),
            from,
            &IntegrityKey::short_term(PWD),
        )
        .unwrap();
        let resp = out[..n].to_vec();
        assert_eq!(
            ice.handle_stun(&resp, from, 0, &mut out),
            Err(IceError::NotBindingRequest)
        );
        // A check without MESSAGE-INTEGRITY.
        let mut buf = [0u8; 128];
        let mut w = MessageWriter::new(
            &mut buf,
            Class::Request,
            stun::BINDING,
            TransactionId::random(),
        )
        .unwrap();
        w.username("bRdg:evtj").unwrap();
        w.priority(1).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        assert_eq!(
            ice.handle_stun(&buf[..n], from, 0, &mut out),
            Err(IceError::MissingIntegrity)
        );
        // A buffer too small for the answer.
        let pkt = Check::default().bytes(TransactionId::random());
        assert_eq!(
            ice.handle_stun(&pkt, from, 0, &mut [0u8; 40]),
            Err(IceError::BufferTooSmall)
        );

        // None of this made a pair or a nomination.
        assert!(ice.pairs.is_empty());
        assert_eq!(ice.nominated(), None);
        assert_eq!(ice.poll_event(), None);
    }

    #[test]
    fn any_remote_ufrag_when_offer_gave_none() {
        let mut ice = IceLite::new(UFRAG, PWD, None).unwrap();
        let check = Check {
            username: "bRdg:whatever",
            ..Check::default()
        };
        assert!(send(&mut ice, &check, v4("192.0.2.1:1"), 0).is_ok());
    }

    #[test]
    fn role_conflict_and_unknown_attribute() {
        let mut ice = agent();
        let from = v4("192.0.2.10:50000");
        let check = Check {
            controlled: true,
            ..nominate(100)
        };
        let reply = send(&mut ice, &check, from, 0).unwrap();
        assert!(matches!(reply, Reply::Error { code: 487, .. }));

        let tid = TransactionId::random();
        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, Class::Request, stun::BINDING, tid).unwrap();
        w.username("bRdg:evtj").unwrap();
        w.priority(5).unwrap();
        w.use_candidate().unwrap();
        w.attribute(0x0777, b"?").unwrap();
        w.message_integrity(&IntegrityKey::short_term(PWD)).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        let mut out = [0u8; RESPONSE_BUF_LEN];
        let reply = ice.handle_stun(&buf[..n], from, 0, &mut out).unwrap();
        assert!(matches!(reply, Reply::Error { code: 420, .. }));
        let resp = Message::parse(&out[..reply.response_len()]).unwrap();
        assert_eq!(resp.error_code().unwrap().code, 420);
        resp.verify_integrity(&IntegrityKey::short_term(PWD))
            .unwrap();

        // Neither check passed: nothing nominated.
        assert!(ice.pairs.is_empty());
        assert_eq!(ice.nominated(), None);
        assert_eq!(ice.poll_event(), None);
    }

    #[test]
    fn highest_priority_nomination_wins() {
        let mut ice = agent();
        let relay = v4("198.51.100.1:3478");
        let host = v4("192.0.2.10:50000");
        let srflx = v4("203.0.113.5:61000");

        send(&mut ice, &nominate(100), relay, 0).unwrap();
        assert_eq!(events(&mut ice), [IceEvent::Nominated(relay)]);
        assert_eq!(ice.nominated(), Some(relay));

        // Higher priority switches.
        send(&mut ice, &nominate(300), host, 10).unwrap();
        assert_eq!(events(&mut ice), [IceEvent::Nominated(host)]);
        assert!(ice.accepts_media_from(host));
        assert!(!ice.accepts_media_from(relay));

        // Lower (and equal) priority is answered but changes nothing.
        send(&mut ice, &nominate(200), srflx, 20).unwrap();
        send(&mut ice, &nominate(300), relay, 30).unwrap();
        assert_eq!(events(&mut ice), []);
        assert_eq!(ice.nominated(), Some(host));

        // Re-nominating the current address changes nothing either.
        send(&mut ice, &nominate(300), host, 40).unwrap();
        assert_eq!(events(&mut ice), []);
        assert_eq!(ice.pairs.len(), 3);
    }

    #[test]
    fn consent_expires_and_is_renewed() {
        let mut ice = agent();
        let a = v4("192.0.2.10:50000");
        let b = v4("192.0.2.11:50000");
        send(&mut ice, &nominate(100), a, 1_000).unwrap();
        assert_eq!(events(&mut ice), [IceEvent::Nominated(a)]);
        assert_eq!(ice.poll_timeout(), Some(31_000));

        // Checks every 5 s (without USE-CANDIDATE, as consent checks are) keep it alive.
        for t in (6_000..=61_000).step_by(5_000) {
            ice.handle_timeout(t);
            send(&mut ice, &Check::default(), a, t).unwrap();
        }
        // Checks from another address do not refresh a's consent.
        send(&mut ice, &Check::default(), b, 70_000).unwrap();
        ice.handle_timeout(61_000 + CONSENT_TIMEOUT_MS - 1);
        assert_eq!(ice.poll_event(), None);
        assert_eq!(ice.nominated(), Some(a));
        assert_eq!(ice.poll_timeout(), Some(61_000 + CONSENT_TIMEOUT_MS));

        ice.handle_timeout(61_000 + CONSENT_TIMEOUT_MS);
        assert_eq!(events(&mut ice), [IceEvent::ConsentExpired(a)]);
        assert_eq!(ice.nominated(), None);
        assert!(!ice.accepts_media_from(a));
        assert_eq!(ice.poll_timeout(), None);
        ice.handle_timeout(200_000);
        assert_eq!(ice.poll_event(), None, "expiry is reported once");
        // b went stale too and was forgotten; the nominated a is kept.
        assert_eq!(ice.pairs.len(), 1);

        // A valid check from a restores it.
        send(&mut ice, &Check::default(), a, 201_000).unwrap();
        assert_eq!(events(&mut ice), [IceEvent::Nominated(a)]);
        assert!(ice.accepts_media_from(a));
        assert_eq!(ice.poll_timeout(), Some(231_000));
    }

    #[test]
    fn consent_timeout_can_be_shortened() {
        let mut ice = agent().with_consent_timeout(1_500);
        let a = v4("192.0.2.10:50000");
        send(&mut ice, &nominate(100), a, 1_000).unwrap();
        assert_eq!(ice.poll_timeout(), Some(2_500));
        ice.handle_timeout(2_499);
        assert_eq!(events(&mut ice), [IceEvent::Nominated(a)]);
        ice.handle_timeout(2_500);
        assert_eq!(events(&mut ice), [IceEvent::ConsentExpired(a)]);
        assert_eq!(check_ufrag("bRdg"), Ok(()));
        assert_eq!(check_ufrag("bRd"), Err(CredentialsError::UfragLength));
        assert_eq!(check_pwd(PWD), Ok(()));
        assert_eq!(check_pwd("x y"), Err(CredentialsError::PwdLength));
    }

    #[test]
    fn lower_priority_nomination_replaces_an_expired_one() {
        let mut ice = agent();
        let a = v4("192.0.2.10:50000");
        let b = v4("198.51.100.1:3478");
        send(&mut ice, &nominate(500), a, 0).unwrap();
        ice.handle_timeout(CONSENT_TIMEOUT_MS);
        assert_eq!(
            events(&mut ice),
            [IceEvent::Nominated(a), IceEvent::ConsentExpired(a)]
        );
        send(&mut ice, &nominate(10), b, 40_000).unwrap();
        assert_eq!(events(&mut ice), [IceEvent::Nominated(b)]);
        assert_eq!(ice.nominated(), Some(b));
    }

    #[test]
    fn ipv6() {
        let mut ice = agent();
        let a: SocketAddr = "[2001:db8::10]:50000".parse().unwrap();
        let b: SocketAddr = "[2001:db8::11]:50001".parse().unwrap();
        send(&mut ice, &nominate(100), a, 0).unwrap();
        send(&mut ice, &nominate(200), b, 1).unwrap();
        assert_eq!(
            events(&mut ice),
            [IceEvent::Nominated(a), IceEvent::Nominated(b)]
        );
        ice.handle_timeout(1 + CONSENT_TIMEOUT_MS);
        assert_eq!(events(&mut ice), [IceEvent::ConsentExpired(b)]);

        // An IPv4 peer seen through a dual-stack socket is answered with an IPv4 address (the
        // helper checks the XOR-MAPPED-ADDRESS is the canonical one); the event keeps the
        // address as the socket reported it.
        let mapped: SocketAddr = "[::ffff:192.0.2.10]:4000".parse().unwrap();
        let mut out = [0u8; RESPONSE_BUF_LEN];
        let reply = ice
            .handle_stun(
                &nominate(1).bytes(TransactionId::random()),
                mapped,
                40_000,
                &mut out,
            )
            .unwrap();
        let resp = Message::parse(&out[..reply.response_len()]).unwrap();
        assert_eq!(resp.xor_mapped_address(), Some(v4("192.0.2.10:4000")));
        assert_eq!(events(&mut ice), [IceEvent::Nominated(mapped)]);
    }

    #[test]
    fn pair_table_is_bounded() {
        let mut ice = agent();
        let nominated = v4("192.0.2.1:1");
        send(&mut ice, &nominate(1), nominated, 0).unwrap();
        for port in 2..40u16 {
            let from = SocketAddr::new(nominated.ip(), port);
            send(&mut ice, &Check::default(), from, u64::from(port)).unwrap();
            assert!(ice.pairs.len() <= MAX_PAIRS);
        }
        // The nominated pair, though least recently checked, was never evicted.
        assert!(ice.pairs.iter().any(|p| p.remote == nominated));
        assert_eq!(ice.nominated(), Some(nominated));
    }

    #[test]
    fn credentials() {
        let ice = IceLite::random(None);
        assert_eq!(ice.local_ufrag().len(), 8);
        assert_eq!(ice.local_pwd().len(), 24);
        let ok = |s: &str| s.bytes().all(|b| ICE_CHARS.contains(&b));
        assert!(ok(ice.local_ufrag()) && ok(ice.local_pwd()));
        assert_ne!(IceLite::random(None).local_pwd(), ice.local_pwd());

        assert_eq!(
            IceLite::new("abc", PWD, None).err(),
            Some(CredentialsError::UfragLength)
        );
        assert_eq!(
            IceLite::new(UFRAG, "tooshorttooshorttoosh", None).err(),
            Some(CredentialsError::PwdLength)
        );
        assert_eq!(
            IceLite::new("ab:c", PWD, None).err(),
            Some(CredentialsError::NotIceChar)
        );
        let ice = agent();
        assert_eq!(ice.remote_ufrag(), Some(PEER_UFRAG));
        assert_eq!(ice.local_ufrag(), UFRAG);
        assert_eq!(ice.local_pwd(), PWD);
    }
}
