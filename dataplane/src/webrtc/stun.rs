//! The STUN codec (RFC 8489) that ICE connectivity checks need, checked against RFC 5769's test
//! vectors. It owns the wire format only: parsing a datagram into a borrowed [`Message`] (header,
//! magic cookie, transaction id, the attributes ICE uses), verifying MESSAGE-INTEGRITY (HMAC-SHA1,
//! short-term credentials) and FINGERPRINT (CRC-32), and writing messages into a caller's buffer
//! with [`MessageWriter`] (nothing is allocated per message). What a check means is the ICE
//! agent's business ([`super::ice`]).
//!
//! Parsing is strict about structure (every length must add up, fixed-size attributes must have
//! their size, nothing may follow FINGERPRINT) and lenient where RFC 8489 says to be: the first
//! of repeated attributes wins, attributes between MESSAGE-INTEGRITY and FINGERPRINT are ignored,
//! unknown comprehension-optional attributes (0x8000-0xFFFF, e.g. Chrome's GOOG-NETWORK-INFO) are
//! skipped, and the first unknown comprehension-required one is reported for the caller to refuse.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aws_lc_rs::{constant_time, hmac, rand};

/// The fixed magic cookie in every RFC 5389/8489 message (bytes 4-7).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the STUN header: type, length, magic cookie, transaction id.
pub const HEADER_LEN: usize = 20;
/// Length of an HMAC-SHA1 MESSAGE-INTEGRITY value.
pub const INTEGRITY_LEN: usize = 20;
/// The STUN method Binding, the only method ICE uses.
pub const BINDING: u16 = 0x0001;
/// What FINGERPRINT's CRC-32 is XORed with ("STUN" in ASCII).
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// Longest USERNAME value accepted (RFC 8489 section 14.3: fewer than 509 bytes after
/// processing; 513 was RFC 5389's bound, kept here to be lenient).
const MAX_USERNAME_LEN: usize = 513;
/// Bytes of an attribute's type and length fields.
const ATTR_HEADER_LEN: usize = 4;

/// Attribute types (RFC 8489 section 18.3, RFC 8445 section 16.1).
pub mod attr {
    /// MAPPED-ADDRESS (RFC 8489): parsed by nobody here, listed so it is not "unknown".
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME: `"<receiver ufrag>:<sender ufrag>"` in ICE.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY: HMAC-SHA1 of the message up to it.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE: class, number and reason phrase of an error response.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES: the comprehension-required types a 420 response refuses.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// REALM (long-term credentials; unused by ICE).
    pub const REALM: u16 = 0x0014;
    /// NONCE (long-term credentials; unused by ICE).
    pub const NONCE: u16 = 0x0015;
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489): tolerated and ignored; ICE uses SHA-1.
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// XOR-MAPPED-ADDRESS: the source address the responder saw, XORed with the cookie.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PRIORITY (ICE): priority of the peer-reflexive candidate the check would create.
    pub const PRIORITY: u16 = 0x0024;
    /// USE-CANDIDATE (ICE): the controlling agent nominates this pair.
    pub const USE_CANDIDATE: u16 = 0x0025;
    /// SOFTWARE: a description of the sender's software.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT: CRC-32 of the message up to it, XOR 0x5354554e; always last.
    pub const FINGERPRINT: u16 = 0x8028;
    /// ICE-CONTROLLED (ICE): the sender is in the controlled role; value is its tie-breaker.
    pub const ICE_CONTROLLED: u16 = 0x8029;
    /// ICE-CONTROLLING (ICE): the sender is in the controlling role; value is its tie-breaker.
    pub const ICE_CONTROLLING: u16 = 0x802A;
}

/// Why a datagram is not a well-formed STUN message, or a message failed a check, or could not
/// be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than the 20-byte header.
    #[error("shorter than a STUN header")]
    TooShort,
    /// One of the two most significant bits of the type is set: not STUN (RFC 7983 demux).
    #[error("not a STUN message (leading bits set)")]
    NotStun,
    /// The magic cookie is not 0x2112A442 (an RFC 3489 message or garbage).
    #[error("bad magic cookie")]
    BadMagicCookie,
    /// The header's length is not a multiple of 4.
    #[error("message length not a multiple of 4")]
    LengthNotAligned,
    /// The header's length does not match the datagram's.
    #[error("message length {header} does not match the {datagram} bytes after the header")]
    LengthMismatch {
        /// Length in the header.
        header: usize,
        /// Bytes after the header in the datagram.
        datagram: usize,
    },
    /// An attribute (with its padding) runs past the end of the message.
    #[error("attribute {typ:#06x} runs past the end of the message")]
    TruncatedAttribute {
        /// The attribute's type.
        typ: u16,
    },
    /// An attribute's value has the wrong size or an invalid content.
    #[error("attribute {typ:#06x} is malformed")]
    BadAttribute {
        /// The attribute's type.
        typ: u16,
    },
    /// Something follows FINGERPRINT, which must be the last attribute.
    #[error("attribute after FINGERPRINT")]
    AttributeAfterFingerprint,
    /// The message carries no MESSAGE-INTEGRITY.
    #[error("no MESSAGE-INTEGRITY")]
    MissingIntegrity,
    /// MESSAGE-INTEGRITY does not verify with the key (wrong password or altered message).
    #[error("MESSAGE-INTEGRITY does not verify")]
    IntegrityMismatch,
    /// The message carries no FINGERPRINT.
    #[error("no FINGERPRINT")]
    MissingFingerprint,
    /// FINGERPRINT does not match the message.
    #[error("FINGERPRINT does not match")]
    FingerprintMismatch,
    /// The writer's buffer cannot hold the message (or it would exceed STUN's 64 KiB).
    #[error("buffer too small for the STUN message")]
    BufferTooSmall,
    /// The writer was asked for an attribute after MESSAGE-INTEGRITY or FINGERPRINT.
    #[error("attribute written after MESSAGE-INTEGRITY or FINGERPRINT")]
    WriteOrder,
}

/// The class of a STUN message (the C1 C0 bits of its type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A request (e.g. an ICE connectivity check).
    Request,
    /// An indication (no response; ICE keepalives).
    Indication,
    /// A success response.
    SuccessResponse,
    /// An error response (carries ERROR-CODE).
    ErrorResponse,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::SuccessResponse => 0b10,
            Class::ErrorResponse => 0b11,
        }
    }
}

/// Encodes method and class into the 14-bit message type (RFC 8489 section 5: the class bits
/// sit at bits 4 and 8, between the method's bits).
fn message_type(class: Class, method: u16) -> u16 {
    let c = class.bits();
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
}

/// Splits a message type into class and method.
fn split_type(typ: u16) -> (Class, u16) {
    let class = match ((typ >> 4) & 0b01) | ((typ >> 7) & 0b10) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::SuccessResponse,
        _ => Class::ErrorResponse,
    };
    let method = (typ & 0x000F) | ((typ >> 1) & 0x0070) | ((typ >> 2) & 0x0F80);
    (class, method)
}

/// The 96-bit transaction id that pairs a response with its request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// A fresh random transaction id (for requests this side sends, e.g. in tests and tools).
    pub fn random() -> Self {
        let mut id = [0u8; 12];
        rand::fill(&mut id).expect("system random generator");
        TransactionId(id)
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The MESSAGE-INTEGRITY key of short-term credentials (RFC 8489 section 9.1.1): the password
/// itself. ICE passwords are ice-chars (ASCII), which OpaqueString processing leaves unchanged,
/// so the bytes are used as they are. Build it once per password, not per message.
#[derive(Clone)]
pub struct IntegrityKey(hmac::Key);

impl IntegrityKey {
    /// The key for short-term credentials with `password` (in ICE: the ice-pwd of the agent that
    /// receives the request and sends the response).
    pub fn short_term(password: &str) -> Self {
        IntegrityKey(hmac::Key::new(
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            password.as_bytes(),
        ))
    }

    /// HMAC-SHA1 of `prefix` (a message up to its MESSAGE-INTEGRITY attribute) with the header's
    /// length field replaced by `adjusted_len`, as RFC 8489 section 14.5 prescribes.
    fn sign(&self, prefix: &[u8], adjusted_len: usize) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(&prefix[..2]);
        ctx.update(&(adjusted_len as u16).to_be_bytes());
        ctx.update(&prefix[4..]);
        ctx.sign()
    }
}

impl fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntegrityKey(..)")
    }
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), as FINGERPRINT uses it.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// A running CRC-32 over several slices.
struct Crc32(u32);

impl Crc32 {
    fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(b)) & 0xFF) as usize] ^ (self.0 >> 8);
        }
    }

    fn finish(self) -> u32 {
        !self.0
    }
}

/// FINGERPRINT value of `prefix` (a message up to its FINGERPRINT attribute) with the header's
/// length field replaced by `adjusted_len` (RFC 8489 section 14.7).
fn fingerprint_of(prefix: &[u8], adjusted_len: usize) -> u32 {
    let mut crc = Crc32::new();
    crc.update(&prefix[..2]);
    crc.update(&(adjusted_len as u16).to_be_bytes());
    crc.update(&prefix[4..]);
    crc.finish() ^ FINGERPRINT_XOR
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Attribute value length rounded up to the 4-byte boundary.
#[inline]
fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// An ERROR-CODE attribute: a code 300-699 and its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    /// The error code (class * 100 + number), e.g. 401 or 487.
    pub code: u16,
    /// The reason phrase (UTF-8).
    pub reason: &'a str,
}

/// A parsed STUN message borrowing the datagram. Parsing checks structure only; integrity and
/// fingerprint are checked on demand ([`Message::verify_integrity`],
/// [`Message::verify_fingerprint`]) because they need a key or cost a pass over the bytes.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    raw: &'a [u8],
    class: Class,
    method: u16,
    transaction_id: TransactionId,
    username: Option<&'a str>,
    software: Option<&'a str>,
    priority: Option<u32>,
    use_candidate: bool,
    ice_controlling: Option<u64>,
    ice_controlled: Option<u64>,
    xor_mapped_address: Option<SocketAddr>,
    error_code: Option<ErrorCode<'a>>,
    /// Offset of the MESSAGE-INTEGRITY attribute's header.
    integrity_at: Option<usize>,
    /// Offset of the FINGERPRINT attribute's header.
    fingerprint_at: Option<usize>,
    unknown_required: Option<u16>,
}

impl<'a> Message<'a> {
    /// Parses one STUN message, which must fill the datagram exactly.
    pub fn parse(raw: &'a [u8]) -> Result<Self, StunError> {
        if raw.len() < HEADER_LEN {
            return Err(StunError::TooShort);
        }
        if raw[0] & 0xC0 != 0 {
            return Err(StunError::NotStun);
        }
        if be32(raw, 4) != MAGIC_COOKIE {
            return Err(StunError::BadMagicCookie);
        }
        let len = usize::from(be16(raw, 2));
        if len % 4 != 0 {
            return Err(StunError::LengthNotAligned);
        }
        if HEADER_LEN + len != raw.len() {
            return Err(StunError::LengthMismatch {
                header: len,
                datagram: raw.len() - HEADER_LEN,
            });
        }
        let (class, method) = split_type(be16(raw, 0));
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&raw[8..HEADER_LEN]);
        let mut m = Message {
            raw,
            class,
            method,
            transaction_id: TransactionId(tid),
            username: None,
            software: None,
            priority: None,
            use_candidate: false,
            ice_controlling: None,
            ice_controlled: None,
            xor_mapped_address: None,
            error_code: None,
            integrity_at: None,
            fingerprint_at: None,
            unknown_required: None,
        };

        let mut at = HEADER_LEN;
        // `len` is a multiple of 4 and every step is too, so a whole attribute header always fits.
        while at < raw.len() {
            let typ = be16(raw, at);
            let vlen = usize::from(be16(raw, at + 2));
            let start = at + ATTR_HEADER_LEN;
            if raw.len() - start < padded(vlen) {
                return Err(StunError::TruncatedAttribute { typ });
            }
            if m.fingerprint_at.is_some() {
                return Err(StunError::AttributeAfterFingerprint);
            }
            let value = &raw[start..start + vlen];
            let bad = StunError::BadAttribute { typ };
            match typ {
                attr::FINGERPRINT => {
                    if vlen != 4 {
                        return Err(bad);
                    }
                    m.fingerprint_at = Some(at);
                }
                // RFC 8489 section 14.5: attributes after MESSAGE-INTEGRITY, but FINGERPRINT
                // (and MESSAGE-INTEGRITY-SHA256), are not covered by it and are ignored.
                _ if m.integrity_at.is_some() => {}
                attr::MESSAGE_INTEGRITY => {
                    if vlen != INTEGRITY_LEN {
                        return Err(bad);
                    }
                    m.integrity_at = Some(at);
                }
                attr::USERNAME => {
                    if vlen > MAX_USERNAME_LEN {
                        return Err(bad);
                    }
                    let s = std::str::from_utf8(value).map_err(|_| bad)?;
                    m.username.get_or_insert(s);
                }
                attr::SOFTWARE => {
                    let s = std::str::from_utf8(value).map_err(|_| bad)?;
                    m.software.get_or_insert(s);
                }
                attr::PRIORITY => {
                    if vlen != 4 {
                        return Err(bad);
                    }
                    m.priority.get_or_insert(be32(value, 0));
                }
                attr::USE_CANDIDATE => {
                    if vlen != 0 {
                        return Err(bad);
                    }
                    m.use_candidate = true;
                }
                attr::ICE_CONTROLLING | attr::ICE_CONTROLLED => {
                    let v: [u8; 8] = value.try_into().map_err(|_| bad)?;
                    let slot = if typ == attr::ICE_CONTROLLING {
                        &mut m.ice_controlling
                    } else {
                        &mut m.ice_controlled
                    };
                    slot.get_or_insert(u64::from_be_bytes(v));
                }
                attr::XOR_MAPPED_ADDRESS => {
                    let addr = decode_xor_address(value, &m.transaction_id).ok_or(bad)?;
                    m.xor_mapped_address.get_or_insert(addr);
                }
                attr::ERROR_CODE => {
                    if vlen < 4 {
                        return Err(bad);
                    }
                    let class = u16::from(value[2] & 0x07);
                    let number = u16::from(value[3]);
                    if !(3..=6).contains(&class) || number > 99 {
                        return Err(bad);
                    }
                    let reason = std::str::from_utf8(&value[4..]).map_err(|_| bad)?;
                    m.error_code.get_or_insert(ErrorCode {
                        code: class * 100 + number,
                        reason,
                    });
                }
                attr::MAPPED_ADDRESS
                | attr::UNKNOWN_ATTRIBUTES
                | attr::REALM
                | attr::NONCE
                | attr::MESSAGE_INTEGRITY_SHA256 => {}
                _ if typ < 0x8000 => {
                    m.unknown_required.get_or_insert(typ);
                }
                _ => {}
            }
            at = start + padded(vlen);
        }
        Ok(m)
    }

    /// The message's class.
    pub fn class(&self) -> Class {
        self.class
    }

    /// The message's method ([`BINDING`] for ICE).
    pub fn method(&self) -> u16 {
        self.method
    }

    /// Whether this is a Binding request (an ICE connectivity check).
    pub fn is_binding_request(&self) -> bool {
        self.method == BINDING && self.class == Class::Request
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// The USERNAME attribute, if present.
    pub fn username(&self) -> Option<&'a str> {
        self.username
    }

    /// In an ICE check, the part of USERNAME before the first ':' (the receiver's ufrag), which
    /// tells which endpoint the check is for. `None` without USERNAME or without ':'.
    pub fn local_ufrag(&self) -> Option<&'a str> {
        self.username?.split_once(':').map(|(local, _)| local)
    }

    /// The SOFTWARE attribute, if present.
    pub fn software(&self) -> Option<&'a str> {
        self.software
    }

    /// The PRIORITY attribute (ICE), if present.
    pub fn priority(&self) -> Option<u32> {
        self.priority
    }

    /// Whether USE-CANDIDATE (ICE) is present.
    pub fn use_candidate(&self) -> bool {
        self.use_candidate
    }

    /// The tie-breaker of ICE-CONTROLLING, if present.
    pub fn ice_controlling(&self) -> Option<u64> {
        self.ice_controlling
    }

    /// The tie-breaker of ICE-CONTROLLED, if present.
    pub fn ice_controlled(&self) -> Option<u64> {
        self.ice_controlled
    }

    /// The XOR-MAPPED-ADDRESS, decoded, if present.
    pub fn xor_mapped_address(&self) -> Option<SocketAddr> {
        self.xor_mapped_address
    }

    /// The ERROR-CODE attribute, if present.
    pub fn error_code(&self) -> Option<ErrorCode<'a>> {
        self.error_code
    }

    /// The first comprehension-required attribute (type below 0x8000) this codec does not know,
    /// if any: RFC 8489 says a request carrying one is answered with 420 (Unknown Attribute).
    pub fn unknown_comprehension_required(&self) -> Option<u16> {
        self.unknown_required
    }

    /// Whether MESSAGE-INTEGRITY is present.
    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    /// Whether FINGERPRINT is present.
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint_at.is_some()
    }

    /// Checks MESSAGE-INTEGRITY with `key` in constant time (RFC 8489 section 14.5: HMAC-SHA1
    /// over the message up to the attribute, the length field counting up to its end).
    pub fn verify_integrity(&self, key: &IntegrityKey) -> Result<(), StunError> {
        let at = self.integrity_at.ok_or(StunError::MissingIntegrity)?;
        let value = at + ATTR_HEADER_LEN;
        let tag = key.sign(&self.raw[..at], value + INTEGRITY_LEN - HEADER_LEN);
        constant_time::verify_slices_are_equal(
            tag.as_ref(),
            &self.raw[value..value + INTEGRITY_LEN],
        )
        .map_err(|_| StunError::IntegrityMismatch)
    }

    /// Checks FINGERPRINT (RFC 8489 section 14.7).
    pub fn verify_fingerprint(&self) -> Result<(), StunError> {
        let at = self.fingerprint_at.ok_or(StunError::MissingFingerprint)?;
        let value = at + ATTR_HEADER_LEN;
        let expected = fingerprint_of(&self.raw[..at], value + 4 - HEADER_LEN);
        if be32(self.raw, value) == expected {
            Ok(())
        } else {
            Err(StunError::FingerprintMismatch)
        }
    }
}

/// Decodes an XOR-MAPPED-ADDRESS value (RFC 8489 section 14.2).
fn decode_xor_address(value: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let port = be16(value, 2) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (value[1], value.len()) {
        (0x01, 8) => IpAddr::V4(Ipv4Addr::from(be32(value, 4) ^ MAGIC_COOKIE)),
        (0x02, 20) => {
            let mut octets = [0u8; 16];
            let pad = xor_pad(tid);
            for (i, o) in octets.iter_mut().enumerate() {
                *o = value[4 + i] ^ pad[i];
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The 128 bits an IPv6 XOR address is XORed with: magic cookie then transaction id.
fn xor_pad(tid: &TransactionId) -> [u8; 16] {
    let mut pad = [0u8; 16];
    pad[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    pad[4..].copy_from_slice(&tid.0);
    pad
}

/// Writes one STUN message into a caller's buffer, attribute by attribute; the header's length
/// always matches what is written so far. MESSAGE-INTEGRITY then FINGERPRINT, if wanted, come
/// last, in that order. Nothing is allocated.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    transaction_id: TransactionId,
    integrity: bool,
    fingerprint: bool,
}

impl<'b> MessageWriter<'b> {
    /// Starts a message of `class` and `method` with `transaction_id` at the start of `buf`.
    pub fn new(
        buf: &'b mut [u8],
        class: Class,
        method: u16,
        transaction_id: TransactionId,
    ) -> Result<Self, StunError> {
        if buf.len() < HEADER_LEN {
            return Err(StunError::BufferTooSmall);
        }
        buf[..2].copy_from_slice(&message_type(class, method).to_be_bytes());
        buf[2..4].copy_from_slice(&[0, 0]);
        buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf[8..HEADER_LEN].copy_from_slice(&transaction_id.0);
        Ok(MessageWriter {
            buf,
            len: HEADER_LEN,
            transaction_id,
            integrity: false,
            fingerprint: false,
        })
    }

    /// Appends an attribute's header and zeroed, padded value space; returns the value's offset.
    fn reserve(&mut self, typ: u16, vlen: usize, pad: u8) -> Result<usize, StunError> {
        // STUN's length field is 16 bits and counts whole 4-byte words.
        let cap = self.buf.len().min(HEADER_LEN + 0xFFFC);
        let end = self.len + ATTR_HEADER_LEN + padded(vlen);
        if vlen > usize::from(u16::MAX) || end > cap {
            return Err(StunError::BufferTooSmall);
        }
        let at = self.len;
        self.buf[at..at + 2].copy_from_slice(&typ.to_be_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&(vlen as u16).to_be_bytes());
        let start = at + ATTR_HEADER_LEN;
        self.buf[start..start + vlen].fill(0);
        self.buf[start + vlen..end].fill(pad);
        self.len = end;
        self.buf[2..4].copy_from_slice(&((end - HEADER_LEN) as u16).to_be_bytes());
        Ok(start)
    }

    fn check_order(&self) -> Result<(), StunError> {
        if self.integrity || self.fingerprint {
            Err(StunError::WriteOrder)
        } else {
            Ok(())
        }
    }

    /// Appends an attribute with the padding bytes set to `pad` (RFC 8489 wants zeros; RFC 5769's
    /// vectors use spaces, which the tests reproduce).
    fn attribute_padded(&mut self, typ: u16, value: &[u8], pad: u8) -> Result<(), StunError> {
        self.check_order()?;
        let start = self.reserve(typ, value.len(), pad)?;
        self.buf[start..start + value.len()].copy_from_slice(value);
        Ok(())
    }

    /// Appends any attribute with its raw value (zero-padded).
    pub fn attribute(&mut self, typ: u16, value: &[u8]) -> Result<(), StunError> {
        self.attribute_padded(typ, value, 0)
    }

    /// Appends USERNAME.
    pub fn username(&mut self, username: &str) -> Result<(), StunError> {
        self.attribute(attr::USERNAME, username.as_bytes())
    }

    /// Appends SOFTWARE.
    pub fn software(&mut self, software: &str) -> Result<(), StunError> {
        self.attribute(attr::SOFTWARE, software.as_bytes())
    }

    /// Appends PRIORITY (ICE).
    pub fn priority(&mut self, priority: u32) -> Result<(), StunError> {
        self.attribute(attr::PRIORITY, &priority.to_be_bytes())
    }

    /// Appends USE-CANDIDATE (ICE).
    pub fn use_candidate(&mut self) -> Result<(), StunError> {
        self.attribute(attr::USE_CANDIDATE, &[])
    }

    /// Appends ICE-CONTROLLING with `tie_breaker` (ICE).
    pub fn ice_controlling(&mut self, tie_breaker: u64) -> Result<(), StunError> {
        self.attribute(attr::ICE_CONTROLLING, &tie_breaker.to_be_bytes())
    }

    /// Appends ICE-CONTROLLED with `tie_breaker` (ICE).
    pub fn ice_controlled(&mut self, tie_breaker: u64) -> Result<(), StunError> {
        self.attribute(attr::ICE_CONTROLLED, &tie_breaker.to_be_bytes())
    }

    /// Appends XOR-MAPPED-ADDRESS for `addr` (family IPv4 or IPv6 as `addr` is; callers that
    /// hold IPv4-mapped IPv6 addresses canonicalize first).
    pub fn xor_mapped_address(&mut self, addr: SocketAddr) -> Result<(), StunError> {
        let mut value = [0u8; 20];
        value[2..4].copy_from_slice(&(addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes());
        let vlen = match addr.ip() {
            IpAddr::V4(ip) => {
                value[1] = 0x01;
                value[4..8].copy_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
                8
            }
            IpAddr::V6(ip) => {
                value[1] = 0x02;
                let pad = xor_pad(&self.transaction_id);
                for (i, o) in ip.octets().iter().enumerate() {
                    value[4 + i] = o ^ pad[i];
                }
                20
            }
        };
        self.attribute(attr::XOR_MAPPED_ADDRESS, &value[..vlen])
    }

    /// Appends ERROR-CODE with `code` (300-699) and `reason`.
    pub fn error_code(&mut self, code: u16, reason: &str) -> Result<(), StunError> {
        self.check_order()?;
        if !(300..700).contains(&code) {
            return Err(StunError::BadAttribute {
                typ: attr::ERROR_CODE,
            });
        }
        let start = self.reserve(attr::ERROR_CODE, 4 + reason.len(), 0)?;
        self.buf[start + 2] = (code / 100) as u8;
        self.buf[start + 3] = (code % 100) as u8;
        self.buf[start + 4..start + 4 + reason.len()].copy_from_slice(reason.as_bytes());
        Ok(())
    }

    /// Appends UNKNOWN-ATTRIBUTES listing `types` (for a 420 response).
    pub fn unknown_attributes(&mut self, types: &[u16]) -> Result<(), StunError> {
        self.check_order()?;
        let start = self.reserve(attr::UNKNOWN_ATTRIBUTES, 2 * types.len(), 0)?;
        for (i, t) in types.iter().enumerate() {
            self.buf[start + 2 * i..start + 2 * i + 2].copy_from_slice(&t.to_be_bytes());
        }
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY computed with `key` over everything written so far.
    pub fn message_integrity(&mut self, key: &IntegrityKey) -> Result<(), StunError> {
        self.check_order()?;
        let at = self.len;
        let start = self.reserve(attr::MESSAGE_INTEGRITY, INTEGRITY_LEN, 0)?;
        let tag = key.sign(&self.buf[..at], self.len - HEADER_LEN);
        self.buf[start..start + INTEGRITY_LEN].copy_from_slice(tag.as_ref());
        self.integrity = true;
        Ok(())
    }

    /// Appends FINGERPRINT over everything written so far; nothing may follow it.
    pub fn fingerprint(&mut self) -> Result<(), StunError> {
        if self.fingerprint {
            return Err(StunError::WriteOrder);
        }
        let at = self.len;
        let start = self.reserve(attr::FINGERPRINT, 4, 0)?;
        let crc = fingerprint_of(&self.buf[..at], self.len - HEADER_LEN);
        self.buf[start..start + 4].copy_from_slice(&crc.to_be_bytes());
        self.fingerprint = true;
        Ok(())
    }

    /// Ends the message; returns its length in bytes (the datagram to send is `buf[..len]`).
    pub fn finish(self) -> usize {
        self.len
    }
}

/// Writes a Binding success response to the check `transaction_id`: XOR-MAPPED-ADDRESS =
/// `mapped` (the check's source address), MESSAGE-INTEGRITY with `key` (the responder's ice-pwd)
/// and FINGERPRINT, as RFC 8445 section 7.3.1 wants. Returns its length. 76 bytes suffice.
pub fn write_binding_success(
    buf: &mut [u8],
    transaction_id: TransactionId,
    mapped: SocketAddr,
    key: &IntegrityKey,
) -> Result<usize, StunError> {
    let mut w = MessageWriter::new(buf, Class::SuccessResponse, BINDING, transaction_id)?;
    w.xor_mapped_address(mapped)?;
    w.message_integrity(key)?;
    w.fingerprint()?;
    Ok(w.finish())
}

/// Writes a Binding error response with ERROR-CODE `code`/`reason` (and UNKNOWN-ATTRIBUTES
/// `unknown` when not empty, for 420), MESSAGE-INTEGRITY with `key` and FINGERPRINT. Returns its
/// length.
pub fn write_binding_error(
    buf: &mut [u8],
    transaction_id: TransactionId,
    code: u16,
    reason: &str,
    unknown: &[u16],
    key: &IntegrityKey,
) -> Result<usize, StunError> {
    let mut w = MessageWriter::new(buf, Class::ErrorResponse, BINDING, transaction_id)?;
    w.error_code(code, reason)?;
    if !unknown.is_empty() {
        w.unknown_attributes(unknown)?;
    }
    w.message_integrity(key)?;
    w.fingerprint()?;
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "VOkJxbRl1RmTxUk/WvJxBt";
    const TID: TransactionId = TransactionId([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);

    /// RFC 5769 section 2.1: sample request.
    const REQUEST: [u8; 108] = [
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74,
        0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e,
        0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36,
        0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20,
        0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5,
        0x7a, 0x3b, 0xcf,
    ];

    /// RFC 5769 section 2.2: sample IPv4 response.
    const RESPONSE_V4: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 section 2.3: sample IPv6 response.
    const RESPONSE_V6: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    fn key() -> IntegrityKey {
        IntegrityKey::short_term(PASSWORD)
    }

    #[test]
    fn crc32_check_value() {
        let mut crc = Crc32::new();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xCBF4_3926);
    }

    #[test]
    fn message_type_round_trips() {
        for class in [
            Class::Request,
            Class::Indication,
            Class::SuccessResponse,
            Class::ErrorResponse,
        ] {
            for method in [BINDING, 0x0003, 0x0FFF, 0x0ABC] {
                assert_eq!(split_type(message_type(class, method)), (class, method));
            }
        }
        assert_eq!(message_type(Class::Request, BINDING), 0x0001);
        assert_eq!(message_type(Class::Indication, BINDING), 0x0011);
        assert_eq!(message_type(Class::SuccessResponse, BINDING), 0x0101);
        assert_eq!(message_type(Class::ErrorResponse, BINDING), 0x0111);
    }

    #[test]
    fn rfc5769_sample_request() {
        let m = Message::parse(&REQUEST).unwrap();
        assert!(m.is_binding_request());
        assert_eq!(m.transaction_id(), TID);
        assert_eq!(m.software(), Some("STUN test client"));
        assert_eq!(m.priority(), Some(0x6e00_01ff));
        assert_eq!(m.ice_controlled(), Some(0x932f_f9b1_5126_3b36));
        assert_eq!(m.ice_controlling(), None);
        assert!(!m.use_candidate());
        assert_eq!(m.username(), Some("evtj:h6vY"));
        assert_eq!(m.local_ufrag(), Some("evtj"));
        assert_eq!(m.unknown_comprehension_required(), None);
        m.verify_integrity(&key()).unwrap();
        m.verify_fingerprint().unwrap();
        assert_eq!(
            m.verify_integrity(&IntegrityKey::short_term("VOkJxbRl1RmTxUk/WvJxBT")),
            Err(StunError::IntegrityMismatch)
        );
    }

    #[test]
    fn rfc5769_sample_request_is_reproduced() {
        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, Class::Request, BINDING, TID).unwrap();
        w.software("STUN test client").unwrap();
        w.priority(0x6e00_01ff).unwrap();
        w.ice_controlled(0x932f_f9b1_5126_3b36).unwrap();
        w.attribute_padded(attr::USERNAME, b"evtj:h6vY", b' ')
            .unwrap();
        w.message_integrity(&key()).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], &REQUEST[..]);
    }

    #[test]
    fn rfc5769_sample_ipv4_response() {
        let m = Message::parse(&RESPONSE_V4).unwrap();
        assert_eq!(m.class(), Class::SuccessResponse);
        assert_eq!(m.method(), BINDING);
        assert_eq!(m.transaction_id(), TID);
        assert_eq!(m.software(), Some("test vector"));
        assert_eq!(
            m.xor_mapped_address(),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        m.verify_integrity(&key()).unwrap();
        m.verify_fingerprint().unwrap();

        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, Class::SuccessResponse, BINDING, TID).unwrap();
        w.attribute_padded(attr::SOFTWARE, b"test vector", b' ')
            .unwrap();
        w.xor_mapped_address("192.0.2.1:32853".parse().unwrap())
            .unwrap();
        w.message_integrity(&key()).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], &RESPONSE_V4[..]);
    }

    #[test]
    fn rfc5769_sample_ipv6_response() {
        let addr: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let m = Message::parse(&RESPONSE_V6).unwrap();
        assert_eq!(m.class(), Class::SuccessResponse);
        assert_eq!(m.transaction_id(), TID);
        assert_eq!(m.software(), Some("test vector"));
        assert_eq!(m.xor_mapped_address(), Some(addr));
        m.verify_integrity(&key()).unwrap();
        m.verify_fingerprint().unwrap();

        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, Class::SuccessResponse, BINDING, TID).unwrap();
        w.attribute_padded(attr::SOFTWARE, b"test vector", b' ')
            .unwrap();
        w.xor_mapped_address(addr).unwrap();
        w.message_integrity(&key()).unwrap();
        w.fingerprint().unwrap();
        let n = w.finish();
        assert_eq!(&buf[..n], &RESPONSE_V6[..]);
    }

    #[test]
    fn binding_success_round_trips() {
        for addr in [
            "203.0.113.7:50000".parse::<SocketAddr>().unwrap(),
            "[2001:db8::42]:1".parse().unwrap(),
        ] {
            let tid = TransactionId::random();
            let mut buf = [0u8; 76];
            let n = write_binding_success(&mut buf, tid, addr, &key()).unwrap();
            let m = Message::parse(&buf[..n]).unwrap();
            assert_eq!(m.class(), Class::SuccessResponse);
            assert_eq!(m.method(), BINDING);
            assert_eq!(m.transaction_id(), tid);
            assert_eq!(m.xor_mapped_address(), Some(addr));
            m.verify_integrity(&key()).unwrap();
            m.verify_fingerprint().unwrap();
        }
    }

    #[test]
    fn tampering_is_detected() {
        let addr: SocketAddr = "198.51.100.1:4000".parse().unwrap();
        let mut buf = [0u8; 128];
        let n = write_binding_success(&mut buf, TID, addr, &key()).unwrap();
        // Flip a bit of the mapped address: the fingerprint no longer matches.
        buf[HEADER_LEN + 6] ^= 1;
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.verify_fingerprint(), Err(StunError::FingerprintMismatch));
        assert_eq!(
            m.verify_integrity(&key()),
            Err(StunError::IntegrityMismatch)
        );
        // Recompute a valid fingerprint over the altered message: integrity still catches it.
        let fp_at = n - 8;
        let crc = fingerprint_of(&buf[..fp_at], n - HEADER_LEN);
        buf[fp_at + 4..n].copy_from_slice(&crc.to_be_bytes());
        let m = Message::parse(&buf[..n]).unwrap();
        m.verify_fingerprint().unwrap();
        assert_eq!(
            m.verify_integrity(&key()),
            Err(StunError::IntegrityMismatch)
        );
    }

    #[test]
    fn error_response_round_trips() {
        let mut buf = [0u8; 128];
        let n = write_binding_error(&mut buf, TID, 487, "Role Conflict", &[], &key()).unwrap();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.class(), Class::ErrorResponse);
        assert_eq!(
            m.error_code(),
            Some(ErrorCode {
                code: 487,
                reason: "Role Conflict"
            })
        );
        m.verify_integrity(&key()).unwrap();
        m.verify_fingerprint().unwrap();

        let n = write_binding_error(&mut buf, TID, 420, "Unknown Attribute", &[0x7777], &key())
            .unwrap();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.error_code().unwrap().code, 420);
        m.verify_integrity(&key()).unwrap();
    }

    #[test]
    fn missing_integrity_and_fingerprint() {
        let mut buf = [0u8; 64];
        let mut w = MessageWriter::new(&mut buf, Class::Request, BINDING, TID).unwrap();
        w.username("a:b").unwrap();
        let n = w.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        assert!(!m.has_integrity() && !m.has_fingerprint());
        assert_eq!(m.verify_integrity(&key()), Err(StunError::MissingIntegrity));
        assert_eq!(m.verify_fingerprint(), Err(StunError::MissingFingerprint));
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        // RFC 5769's request with a PRIORITY slipped in after MESSAGE-INTEGRITY (length grown by
        // 8): the parser ignores it, and MI still verifies because it counts only up to itself.
        let mut pkt = Vec::from(&REQUEST[..REQUEST.len() - 8]);
        pkt.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 0x11, 0x22, 0x33, 0x44]);
        let len = (pkt.len() - HEADER_LEN) as u16;
        pkt[2..4].copy_from_slice(&len.to_be_bytes());
        let m = Message::parse(&pkt).unwrap();
        assert_eq!(m.priority(), Some(0x6e00_01ff));
        m.verify_integrity(&key()).unwrap();
    }

    #[test]
    fn unknown_attributes() {
        let mut buf = [0u8; 64];
        let mut w = MessageWriter::new(&mut buf, Class::Request, BINDING, TID).unwrap();
        w.attribute(0xC057, &[0, 1, 0, 10]).unwrap(); // GOOG-NETWORK-INFO: optional
        let n = w.finish();
        assert_eq!(
            Message::parse(&buf[..n])
                .unwrap()
                .unknown_comprehension_required(),
            None
        );
        let mut w = MessageWriter::new(&mut buf, Class::Request, BINDING, TID).unwrap();
        w.attribute(0x0777, b"x").unwrap();
        w.attribute(0x0778, b"y").unwrap();
        let n = w.finish();
        assert_eq!(
            Message::parse(&buf[..n])
                .unwrap()
                .unknown_comprehension_required(),
            Some(0x0777)
        );
    }

    #[test]
    fn malformed_messages_are_rejected() {
        use StunError::*;
        let parse = |b: &[u8]| Message::parse(b).err();
        assert_eq!(parse(&REQUEST[..19]), Some(TooShort));
        assert_eq!(parse(&[]), Some(TooShort));

        let mut p = REQUEST;
        p[0] |= 0x80;
        assert_eq!(parse(&p), Some(NotStun));

        let mut p = REQUEST;
        p[5] ^= 0xFF;
        assert_eq!(parse(&p), Some(BadMagicCookie));

        let mut p = REQUEST;
        p[3] = 0x57;
        assert_eq!(parse(&p), Some(LengthNotAligned));

        assert_eq!(
            parse(&REQUEST[..REQUEST.len() - 4]),
            Some(LengthMismatch {
                header: 0x58,
                datagram: 0x54
            })
        );

        // SOFTWARE claims 0x55 bytes (0x58 padded): past the end.
        let mut p = REQUEST;
        p[23] = 0x55;
        assert_eq!(parse(&p), Some(TruncatedAttribute { typ: 0x8022 }));

        // PRIORITY of 8 bytes (swallowing ICE-CONTROLLED's header) is malformed.
        let mut p = REQUEST;
        p[43] = 8;
        assert_eq!(
            parse(&p),
            Some(BadAttribute {
                typ: attr::PRIORITY
            })
        );

        // USERNAME that is not UTF-8.
        let mut p = REQUEST;
        p[64] = 0xFF;
        assert_eq!(
            parse(&p),
            Some(BadAttribute {
                typ: attr::USERNAME
            })
        );

        // Something after FINGERPRINT.
        let mut p = Vec::from(&REQUEST[..]);
        p.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        let len = (p.len() - HEADER_LEN) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(&p), Some(AttributeAfterFingerprint));

        // XOR-MAPPED-ADDRESS with family 3, and with an IPv6 family but IPv4 length.
        let mut p = RESPONSE_V4;
        p[41] = 0x03;
        let bad_xma = Some(BadAttribute {
            typ: attr::XOR_MAPPED_ADDRESS,
        });
        assert_eq!(parse(&p), bad_xma);
        p[41] = 0x02;
        assert_eq!(parse(&p), bad_xma);

        // ERROR-CODE with class 2.
        let mut buf = [0u8; 64];
        let n = write_binding_error(&mut buf, TID, 487, "x", &[], &key()).unwrap();
        buf[HEADER_LEN + 6] = 2;
        assert_eq!(
            parse(&buf[..n]),
            Some(BadAttribute {
                typ: attr::ERROR_CODE
            })
        );
    }

    #[test]
    fn writer_limits() {
        let addr: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        let mut small = [0u8; 75];
        assert_eq!(
            write_binding_success(&mut small, TID, addr, &key()),
            Err(StunError::BufferTooSmall)
        );
        let mut exact = [0u8; 76];
        assert_eq!(write_binding_success(&mut exact, TID, addr, &key()), Ok(76));
        assert_eq!(
            MessageWriter::new(&mut [0u8; 19], Class::Request, BINDING, TID).err(),
            Some(StunError::BufferTooSmall)
        );

        let mut buf = [0u8; 128];
        let mut w = MessageWriter::new(&mut buf, Class::Request, BINDING, TID).unwrap();
        w.message_integrity(&key()).unwrap();
        assert_eq!(w.priority(1), Err(StunError::WriteOrder));
        w.fingerprint().unwrap();
        assert_eq!(w.fingerprint(), Err(StunError::WriteOrder));
        assert_eq!(w.message_integrity(&key()), Err(StunError::WriteOrder));
        assert_eq!(w.error_code(200, "x"), Err(StunError::WriteOrder));
    }
}
