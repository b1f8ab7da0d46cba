//! The VP8 RTP payload descriptor (RFC 7741 section 4.2), read and rewritten in place: whether a
//! packet starts a keyframe (and the frame's size, from the keyframe header), its picture id and
//! TL0PICIDX. Simulcast switching needs all of them: a receiver moves to another encoding only
//! at one of its keyframes, and its picture ids and TL0PICIDX must run on without a jump.

/// What one VP8 packet says about its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// The first packet of a keyframe (start of partition 0, inter-frame bit clear).
    pub keyframe: bool,
    /// The first packet of a frame (any kind).
    pub start: bool,
    /// The picture id and its width in bits (7 or 15), if present.
    pub picture_id: Option<(u16, u8)>,
    /// Byte offset of the picture id in the payload.
    picture_at: usize,
    /// TL0PICIDX, if present, and its offset in the payload.
    pub tl0: Option<u8>,
    tl0_at: usize,
    /// A keyframe's size (width, height), when this packet starts one.
    pub size: Option<(u16, u16)>,
}

/// Reads the descriptor of VP8 payload `p` (after the RTP header). `None` when it does not parse.
pub fn parse(p: &[u8]) -> Option<Descriptor> {
    let b0 = *p.first()?;
    let (x, s, pid) = (b0 & 0x80 != 0, b0 & 0x10 != 0, b0 & 0x07);
    let mut d = Descriptor {
        start: s && pid == 0,
        ..Descriptor::default()
    };
    let mut at = 1;
    if x {
        let b1 = *p.get(1)?;
        at = 2;
        let (i, l, t, k) = (
            b1 & 0x80 != 0,
            b1 & 0x40 != 0,
            b1 & 0x20 != 0,
            b1 & 0x10 != 0,
        );
        if i {
            let first = *p.get(at)?;
            if first & 0x80 != 0 {
                let id = u16::from_be_bytes([first & 0x7f, *p.get(at + 1)?]);
                d.picture_id = Some((id, 15));
                d.picture_at = at;
                at += 2;
            } else {
                d.picture_id = Some((u16::from(first), 7));
                d.picture_at = at;
                at += 1;
            }
        }
        if l {
            d.tl0 = Some(*p.get(at)?);
            d.tl0_at = at;
            at += 1;
        }
        if t || k {
            p.get(at)?;
            at += 1;
        }
    }
    if d.start {
        let header = p.get(at..)?;
        // Frame tag: bit 0 of the first byte is the inter-frame flag (0: keyframe).
        if header.first().is_some_and(|b| b & 1 == 0) {
            d.keyframe = true;
            // Keyframe header: 3-byte tag, start code 9d 01 2a, 14-bit width and height.
            if header.len() >= 10 && header[3..6] == [0x9d, 0x01, 0x2a] {
                let w = u16::from_le_bytes([header[6], header[7]]) & 0x3fff;
                let h = u16::from_le_bytes([header[8], header[9]]) & 0x3fff;
                d.size = Some((w, h));
            }
        }
    }
    Some(d)
}

/// Writes picture id `id` (in the packet's own width) and TL0PICIDX `tl0` into payload `p`
/// whose descriptor is `d` (fields the packet lacks are left alone).
pub fn rewrite(p: &mut [u8], d: &Descriptor, id: u16, tl0: u8) {
    if let Some((_, bits)) = d.picture_id {
        if bits == 15 {
            let v = (id & 0x7fff) | 0x8000;
            p[d.picture_at..d.picture_at + 2].copy_from_slice(&v.to_be_bytes());
        } else {
            p[d.picture_at] = (id & 0x7f) as u8;
        }
    }
    if d.tl0.is_some() {
        p[d.tl0_at] = tl0;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A VP8 payload: descriptor with a 15-bit picture id and TL0PICIDX, then a frame header
    /// (a keyframe's with `size`, or an inter frame's).
    pub(crate) fn payload(
        start: bool,
        keyframe: bool,
        id: u16,
        tl0: u8,
        size: (u16, u16),
    ) -> Vec<u8> {
        let mut p = vec![0x80 | if start { 0x10 } else { 0 }, 0xc0];
        p.extend_from_slice(&((id & 0x7fff) | 0x8000).to_be_bytes());
        p.push(tl0);
        if keyframe {
            p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a]);
            p.extend_from_slice(&size.0.to_le_bytes());
            p.extend_from_slice(&size.1.to_le_bytes());
        } else {
            p.extend_from_slice(&[0x31, 0x02, 0x00]);
        }
        p.extend_from_slice(&[0xaa; 20]);
        p
    }

    #[test]
    fn keyframes_are_told_apart_and_sized() {
        let d = parse(&payload(true, true, 300, 7, (1280, 720))).unwrap();
        assert!(d.keyframe && d.start);
        assert_eq!(d.size, Some((1280, 720)));
        assert_eq!(d.picture_id, Some((300, 15)));
        assert_eq!(d.tl0, Some(7));
        let d = parse(&payload(true, false, 301, 7, (0, 0))).unwrap();
        assert!(!d.keyframe && d.start && d.size.is_none());
        // A later packet of a keyframe is not its start.
        let d = parse(&payload(false, true, 300, 7, (1280, 720))).unwrap();
        assert!(!d.keyframe && !d.start);
        // The shortest descriptor: no extension.
        let d = parse(&[
            0x10, 0x00, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00,
        ])
        .unwrap();
        assert!(d.keyframe);
        assert_eq!(d.size, Some((320, 180)));
        assert_eq!(d.picture_id, None);
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&[0x80]), None, "X set, no extension byte");
    }

    #[test]
    fn picture_id_and_tl0_are_rewritten_in_place() {
        let mut p = payload(true, false, 300, 7, (0, 0));
        let d = parse(&p).unwrap();
        rewrite(&mut p, &d, 0x7fff + 5, 200);
        let d = parse(&p).unwrap();
        assert_eq!(d.picture_id, Some((4, 15)), "wraps at 15 bits");
        assert_eq!(d.tl0, Some(200));
        // 7-bit picture ids stay 7 bits.
        let mut p = vec![0x90, 0x80, 0x05, 0x31, 0, 0];
        let d = parse(&p).unwrap();
        assert_eq!(d.picture_id, Some((5, 7)));
        rewrite(&mut p, &d, 130, 0);
        assert_eq!(parse(&p).unwrap().picture_id, Some((2, 7)));
    }
}
