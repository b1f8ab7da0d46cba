//! Per-receiver rewriting of the RTP header: payload types and RFC 8285 header extension ids,
//! for a WebRTC receiver whose offer numbers codecs or extensions differently from the sender's.
//!
//! A [`Rewrite`] belongs to one receiver and is applied to that receiver's own copy only: the
//! copy SRTP writes for it anyway ([`super::Verdict::protect`]), after the header is copied and
//! before it is protected, so the shared received packet (what every other receiver gets) is
//! never touched and the rewrite costs no extra copy. It never changes a packet's length:
//! a removed extension element is overwritten with padding bytes (zeros, which both forms read
//! as padding), so the SRTP index, the header length the core parsed and the payload stay as
//! they are. Lookups are two fixed tables (128 payload types, 256 extension ids): no
//! allocation, no hashing per packet.

/// Most payload type mappings one receiver may have (one per payload type).
pub const MAX_PAYLOAD_TYPES: usize = 128;
/// Most extension id mappings one receiver may have (one per id).
pub const MAX_EXTENSIONS: usize = 255;

/// `defined by profile` of the one-byte header extension form (RFC 8285 section 4.2).
const ONE_BYTE: u16 = 0xBEDE;
/// `defined by profile` of the two-byte form, less its 4 `appbits` (RFC 8285 section 4.3).
const TWO_BYTE: u16 = 0x1000;
/// Highest id the one-byte form can carry (15 is reserved: it stops parsing).
const ONE_BYTE_MAX_ID: u8 = 14;

/// Why a rewrite cannot be used. Messages name the list (the API prefixes `rewrite.`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// A payload type above 127.
    #[error("payload_types: {0} is not an RTP payload type (0-127)")]
    PayloadType(u32),
    /// A target payload type a muxed port would read as RTCP.
    #[error(
        "payload_types: {0} is in 64-95, which collides with RTCP on a muxed port (RFC 5761 section 4)"
    )]
    RtcpRange(u32),
    /// An extension id outside 1-255 (or a target above 255).
    #[error(
        "extensions: {0} is not a header extension id (from: 1-255; to: 1-255, or 0 to remove)"
    )]
    ExtensionId(u32),
    /// The same `from` twice.
    #[error("{list}: {from} is mapped twice")]
    Duplicate {
        /// `payload_types` or `extensions`.
        list: &'static str,
        /// The repeated source value.
        from: u32,
    },
    /// More mappings than there are values.
    #[error("{list}: {got} mappings, more than the limit of {limit}")]
    TooMany {
        /// `payload_types` or `extensions`.
        list: &'static str,
        /// How many were given.
        got: usize,
        /// The limit.
        limit: usize,
    },
}

/// How one receiver's copies are rewritten; see the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// `pt[from] = to`; the identity where nothing is mapped.
    pt: [u8; 128],
    /// `ext[from] = to`; 0 removes the element; the identity where nothing is mapped.
    ext: [u8; 256],
    /// Some payload type changes.
    maps_pt: bool,
    /// Some extension id changes (else the extension block is not walked).
    maps_ext: bool,
}

impl std::fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let changed = |t: &[u8]| -> Vec<(usize, u8)> {
            t.iter()
                .enumerate()
                .filter(|&(i, &to)| usize::from(to) != i)
                .map(|(i, &to)| (i, to))
                .collect()
        };
        f.debug_struct("Rewrite")
            .field("payload_types", &changed(&self.pt))
            .field("extensions", &changed(&self.ext[1..]))
            .finish()
    }
}

impl Rewrite {
    /// A rewrite from `(from, to)` pairs: payload types (0-127 each; `to` not in 64-95) and
    /// extension ids (`from` 1-255, `to` 1-255 or 0 to remove). Each `from` at most once.
    /// `None` when it changes nothing.
    pub fn new(
        payload_types: &[(u32, u32)],
        extensions: &[(u32, u32)],
    ) -> Result<Option<Self>, RewriteError> {
        let too_many = |list, got, limit| RewriteError::TooMany { list, got, limit };
        if payload_types.len() > MAX_PAYLOAD_TYPES {
            return Err(too_many(
                "payload_types",
                payload_types.len(),
                MAX_PAYLOAD_TYPES,
            ));
        }
        if extensions.len() > MAX_EXTENSIONS {
            return Err(too_many("extensions", extensions.len(), MAX_EXTENSIONS));
        }
        let mut r = Rewrite {
            pt: std::array::from_fn(|i| i as u8),
            ext: std::array::from_fn(|i| i as u8),
            maps_pt: false,
            maps_ext: false,
        };
        let mut seen = [false; 256];
        for &(from, to) in payload_types {
            for v in [from, to] {
                if v > 127 {
                    return Err(RewriteError::PayloadType(v));
                }
            }
            if (64..=95).contains(&to) {
                return Err(RewriteError::RtcpRange(to));
            }
            if std::mem::replace(&mut seen[from as usize], true) {
                return Err(RewriteError::Duplicate {
                    list: "payload_types",
                    from,
                });
            }
            r.pt[from as usize] = to as u8;
            r.maps_pt |= from != to;
        }
        let mut seen = [false; 256];
        for &(from, to) in extensions {
            if !(1..=255).contains(&from) {
                return Err(RewriteError::ExtensionId(from));
            }
            if to > 255 {
                return Err(RewriteError::ExtensionId(to));
            }
            if std::mem::replace(&mut seen[from as usize], true) {
                return Err(RewriteError::Duplicate {
                    list: "extensions",
                    from,
                });
            }
            r.ext[from as usize] = to as u8;
            r.maps_ext |= from != to;
        }
        Ok((r.maps_pt || r.maps_ext).then_some(r))
    }

    /// Rewrites the RTP header `hdr` (fixed part, CSRCs and extension, as the core parsed it)
    /// in place. Its length never changes. An extension block that does not parse is left as
    /// it is from the first element that does not fit; an element of the one-byte form mapped
    /// to an id above 14 (which that form cannot carry) is removed.
    #[inline]
    pub fn apply(&self, hdr: &mut [u8]) {
        if hdr.len() < 12 {
            return;
        }
        if self.maps_pt {
            let b = hdr[1];
            hdr[1] = (b & 0x80) | self.pt[usize::from(b & 0x7f)];
        }
        if self.maps_ext && hdr[0] & 0x10 != 0 {
            self.extensions(hdr);
        }
    }

    /// Walks the header extension block of `hdr` (its X bit is set).
    fn extensions(&self, hdr: &mut [u8]) {
        let at = 12 + 4 * usize::from(hdr[0] & 0x0f);
        let Some(head) = hdr.get(at..at + 4) else {
            return;
        };
        let profile = u16::from_be_bytes([head[0], head[1]]);
        let words = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let end = (at + 4 + 4 * words).min(hdr.len());
        let body = &mut hdr[at + 4..end];
        if profile == ONE_BYTE {
            self.one_byte(body);
        } else if profile & 0xfff0 == TWO_BYTE {
            self.two_byte(body);
        }
    }

    /// One-byte elements (RFC 8285 section 4.2): `id(4) len-1(4) data`.
    fn one_byte(&self, b: &mut [u8]) {
        let mut i = 0;
        while i < b.len() {
            let id = b[i] >> 4;
            if id == 0 {
                i += 1; // padding
                continue;
            }
            if id == 15 {
                return; // reserved: nothing after it is read
            }
            let end = i + 2 + usize::from(b[i] & 0x0f);
            if end > b.len() {
                return;
            }
            match self.ext[usize::from(id)] {
                to if to == 0 || to > ONE_BYTE_MAX_ID => b[i..end].fill(0),
                to => b[i] = (to << 4) | (b[i] & 0x0f),
            }
            i = end;
        }
    }

    /// Two-byte elements (RFC 8285 section 4.3): `id(8) len(8) data`.
    fn two_byte(&self, b: &mut [u8]) {
        let mut i = 0;
        while i < b.len() {
            let id = b[i];
            if id == 0 {
                i += 1; // padding
                continue;
            }
            let Some(&len) = b.get(i + 1) else {
                return;
            };
            let end = i + 2 + usize::from(len);
            if end > b.len() {
                return;
            }
            match self.ext[usize::from(id)] {
                0 => b[i..end].fill(0),
                to => b[i] = to,
            }
            i = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rtp;

    /// An RTP packet with payload type `pt` (marker set), one CSRC and the extension block
    /// `profile` + `elements` (padded to whole words), then `payload`.
    fn packet(pt: u8, profile: u16, elements: &[u8], payload: &[u8]) -> Vec<u8> {
        let words = elements.len().div_ceil(4);
        let mut p = vec![0x80 | 0x10 | 1, 0x80 | pt, 0, 7, 0, 0, 0, 9, 0, 0, 0, 42];
        p.extend_from_slice(&0xc5c5_c5c5u32.to_be_bytes()); // CSRC
        p.extend_from_slice(&profile.to_be_bytes());
        p.extend_from_slice(&(words as u16).to_be_bytes());
        p.extend_from_slice(elements);
        p.resize(p.len() + words * 4 - elements.len(), 0);
        p.extend_from_slice(payload);
        p
    }

    fn rewrite(pts: &[(u32, u32)], exts: &[(u32, u32)]) -> Rewrite {
        Rewrite::new(pts, exts).unwrap().expect("changes something")
    }

    /// Applies `r` to the header of `p` as the send path does, checking the length is kept.
    fn apply(r: &Rewrite, p: &[u8]) -> Vec<u8> {
        let mut out = p.to_vec();
        let hl = rtp::Header::parse(p).unwrap().len;
        r.apply(&mut out[..hl]);
        assert_eq!(out.len(), p.len());
        assert_eq!(rtp::Header::parse(&out).unwrap().len, hl);
        out
    }

    #[test]
    fn payload_type_is_mapped_and_the_marker_kept() {
        let r = rewrite(&[(96, 100), (111, 109)], &[]);
        let p = packet(96, ONE_BYTE, &[0x10, 0xaa], b"payload");
        let out = apply(&r, &p);
        let h = rtp::Header::parse(&out).unwrap();
        assert_eq!((h.pt, h.marker), (100, true));
        // Only byte 1 changed.
        assert_eq!(out[2..], p[2..]);
        // Unlisted payload types go through unchanged.
        let p = packet(97, ONE_BYTE, &[0x10, 0xaa], b"x");
        assert_eq!(apply(&r, &p), p);
        let mut no_marker = packet(111, ONE_BYTE, &[], b"x");
        no_marker[1] &= 0x7f;
        assert_eq!(apply(&r, &no_marker)[1], 109);
    }

    #[test]
    fn one_byte_extensions_are_mapped_and_stripped() {
        // id 1 (len 3), padding, id 3 (len 2), id 5 (len 1).
        let elements = [0x12, 1, 2, 3, 0, 0x31, 7, 8, 0x50, 9];
        let p = packet(96, ONE_BYTE, &elements, b"payload");
        let r = rewrite(&[], &[(3, 0), (5, 4)]);
        let out = apply(&r, &p);
        let ext = &out[20..20 + 12];
        assert_eq!(ext, [0x12, 1, 2, 3, 0, 0, 0, 0, 0x40, 9, 0, 0]);
        assert_eq!(out[32..], *b"payload");
        assert_eq!(out[1], p[1], "payload type not mapped: unchanged");
        // Mapping to an id the one-byte form cannot carry removes the element.
        let out = apply(&rewrite(&[], &[(1, 20)]), &p);
        assert_eq!(out[20..24], [0, 0, 0, 0]);
        assert_eq!(out[25], 0x31);
    }

    #[test]
    fn two_byte_extensions_are_mapped_and_stripped() {
        // id 3 (len 2), padding, id 200 (len 0), id 7 (len 1): profile 0x1000 with appbits 5.
        let elements = [3, 2, 0xaa, 0xbb, 0, 200, 0, 7, 1, 0xcc];
        let p = packet(96, TWO_BYTE | 5, &elements, b"payload");
        let r = rewrite(&[(96, 100)], &[(3, 0), (200, 17)]);
        let out = apply(&r, &p);
        assert_eq!(out[1] & 0x7f, 100);
        assert_eq!(out[16..20], [0x10, 0x05, 0, 3], "profile and length kept");
        let ext = &out[20..32];
        assert_eq!(ext, [0, 0, 0, 0, 0, 17, 0, 7, 1, 0xcc, 0, 0]);
        assert_eq!(out[32..], *b"payload");
    }

    #[test]
    fn malformed_or_foreign_extensions_are_left_alone() {
        let r = rewrite(&[], &[(1, 0), (3, 4)]);
        // An element running past the block: elements before it are done, it is not.
        let p = packet(96, ONE_BYTE, &[0x30, 1, 0x1f, 1, 2, 3], b"");
        let out = apply(&r, &p);
        assert_eq!(out[20..26], [0x40, 1, 0x1f, 1, 2, 3]);
        // id 15 stops the walk.
        let p = packet(96, ONE_BYTE, &[0xf0, 0x30, 1], b"");
        assert_eq!(apply(&r, &p), p);
        // Another profile (not RFC 8285) is not touched.
        let p = packet(96, 0xabcd, &[0x30, 1], b"");
        assert_eq!(apply(&r, &p), p);
        // No extension at all.
        let mut p = packet(96, ONE_BYTE, &[], b"abc");
        p[0] = 0x80;
        p.drain(12..20);
        assert_eq!(apply(&r, &p), p);
        // Truncated headers never panic.
        for n in 0..24 {
            let mut q = packet(96, TWO_BYTE, &[3, 9, 1], b"")[..n].to_vec();
            r.apply(&mut q);
        }
    }

    #[test]
    fn validation() {
        assert_eq!(Rewrite::new(&[], &[]), Ok(None));
        assert_eq!(Rewrite::new(&[(96, 96)], &[(3, 3)]), Ok(None), "identity");
        let e = |pts: &[(u32, u32)], exts: &[(u32, u32)]| Rewrite::new(pts, exts).unwrap_err();
        assert_eq!(e(&[(128, 1)], &[]), RewriteError::PayloadType(128));
        assert_eq!(e(&[(96, 72)], &[]), RewriteError::RtcpRange(72));
        assert!(matches!(
            e(&[(96, 100), (96, 101)], &[]),
            RewriteError::Duplicate { from: 96, .. }
        ));
        assert_eq!(e(&[], &[(0, 1)]), RewriteError::ExtensionId(0));
        assert_eq!(e(&[], &[(3, 256)]), RewriteError::ExtensionId(256));
        assert!(
            e(&[], &[(3, 0), (3, 1)])
                .to_string()
                .starts_with("extensions: 3 is mapped twice")
        );
        let many: Vec<(u32, u32)> = (0..129).map(|i| (i, i)).collect();
        assert!(matches!(
            e(&many, &[]),
            RewriteError::TooMany { got: 129, .. }
        ));
        // Two senders' numbers may map to the receiver's one.
        assert!(
            Rewrite::new(&[(96, 100), (98, 100)], &[])
                .unwrap()
                .is_some()
        );
    }
}
