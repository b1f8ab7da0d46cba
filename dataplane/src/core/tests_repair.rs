//! The core answering NACKs from the retransmission cache: plain and SRTP receivers get the
//! copy they were sent before, RTX receivers a repair on their RTX stream, and only what the
//! cache does not hold goes upstream, also for a stream that arrives over a relay.

use std::net::SocketAddr;
use std::sync::Arc;

use super::repair::rtx::Rtx;
use super::*;
use crate::testkit::{feedback, nack, rtp};

fn a(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Conference 0: endpoint 1 (port 1) sends SSRC 10; endpoints 2 and 3 receive.
fn core() -> Core {
    let mut b = TableBuilder::new();
    let c0 = b.conference();
    b.endpoint(c0, 1, &[10], Some(a(1)), None);
    b.endpoint(c0, 2, &[20], Some(a(2)), None);
    b.endpoint(c0, 3, &[30], Some(a(3)), None);
    Core::new(b.build(1)).with_repair_cache(Some(Arc::new(RepairCache::new(4, 64))))
}

fn send(c: &mut Core, seq: u16) -> Vec<u16> {
    let mut p = rtp(10, seq, u32::from(seq) * 3000, &[seq as u8; 100]);
    let v = c.handle(&mut p, a(1)).unwrap();
    v.dests.iter().map(|p| p.addr.port()).collect()
}

/// A NACK from `src` (sender SSRC `me`) for SSRC 10: `(pid, blp)` entries.
fn nack_of(me: u32, entries: &[(u16, u16)]) -> Vec<u8> {
    let mut fci = Vec::new();
    for (pid, blp) in entries {
        fci.extend_from_slice(&pid.to_be_bytes());
        fci.extend_from_slice(&blp.to_be_bytes());
    }
    feedback(1, 205, me, 10, &fci)
}

fn repairs(c: &mut Core) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some((n, to)) = c.next_repair(&mut buf) {
        out.push((to.as_socket().unwrap().port(), buf[..n].to_vec()));
    }
    out
}

#[test]
fn the_first_nack_starts_caching_later_ones_are_answered_and_only_misses_go_upstream() {
    let mut c = core();
    c.set_now(1_000);
    for seq in 1..=5 {
        assert_eq!(send(&mut c, seq), [2, 3]);
    }
    // Nothing is cached before a receiver NACKs the stream: this one goes to the sender.
    let mut n = nack(20, 10, 3);
    let v = c.handle(&mut n, a(2)).unwrap();
    assert_eq!(
        v.dests.iter().map(|p| p.addr.port()).collect::<Vec<_>>(),
        [1]
    );
    assert!(repairs(&mut c).is_empty());
    assert_eq!((c.counters.nack_rx, c.counters.nack_forwarded), (1, 1));
    // From now on the stream is kept.
    c.set_now(1_010);
    for seq in 6..=9 {
        send(&mut c, seq);
    }
    c.set_now(1_020);
    // 7 and 8 lost on the way to endpoint 2: answered, nothing goes upstream.
    assert_eq!(
        c.handle(&mut nack_of(20, &[(7, 1)]), a(2)).err(),
        Some(DropReason::NackAnswered)
    );
    let got = repairs(&mut c);
    assert_eq!(
        got,
        [
            (2, rtp(10, 7, 21_000, &[7; 100])),
            (2, rtp(10, 8, 24_000, &[8; 100]))
        ]
    );
    assert_eq!(c.counters.nack_repaired, 2);
    // 9 is held, 4 and 100 are not: the NACK goes on asking for those two only.
    let mut n = nack_of(30, &[(4, 0), (9, 0), (100, 0)]);
    let v = c.handle(&mut n, a(3)).unwrap();
    assert_eq!(
        v.dests.iter().map(|p| p.addr.port()).collect::<Vec<_>>(),
        [1]
    );
    assert_eq!(v.plain(&n), &nack_of(30, &[(4, 0), (100, 0)])[..]);
    assert_eq!(repairs(&mut c), [(3, rtp(10, 9, 27_000, &[9; 100]))]);
    assert_eq!(c.counters.nack_rx, 1 + 2 + 3);
    assert_eq!(c.counters.nack_forwarded, 1 + 2);
    assert_eq!(c.counters.nack_repaired, 3);
    assert_eq!(c.counters.drops[DropReason::NackAnswered as usize], 1);
}

#[test]
fn without_a_cache_every_nack_goes_to_the_sender() {
    let mut b = TableBuilder::new();
    let c0 = b.conference();
    b.endpoint(c0, 1, &[10], Some(a(1)), None);
    b.endpoint(c0, 2, &[20], Some(a(2)), None);
    let mut c = Core::new(b.build(1));
    for seq in 1..=3 {
        send(&mut c, seq);
    }
    for _ in 0..2 {
        let mut n = nack(20, 10, 2);
        assert_eq!(c.handle(&mut n, a(2)).unwrap().dests.len(), 1);
    }
    assert!(repairs(&mut c).is_empty());
    assert_eq!(c.counters.nack_rx, 0, "not counted: nothing answers");
}

#[test]
fn an_srtp_receiver_gets_the_very_copy_it_was_sent_an_rtx_receiver_a_repair_of_its_own() {
    let p = srtp::Profile::AeadAes128Gcm;
    let s2 = Arc::new(srtp::Session::new(p, &[2; 16], &[2; 12]).unwrap());
    let s3 = Arc::new(srtp::Session::new(p, &[3; 16], &[3; 12]).unwrap());
    let rewrite = Rewrite::new(&[(96, 100)], &[]).unwrap().map(Arc::new);
    let mut b = TableBuilder::new();
    let conf = b.conference();
    b.endpoint(conf, 1, &[10], Some(a(1)), None);
    let mut c = Core::new(b.build(1)).with_repair_cache(Some(Arc::new(RepairCache::new(4, 64))));
    let add = |uid: u64, s: &Arc<srtp::Session>| Op::AddEndpoint {
        conf,
        uid,
        ssrcs: Box::new([]),
        addr: Some(a(uid as u16)),
        srtp: Some((s.clone(), s.clone())),
        claim: None,
        webrtc: false,
        rewrite: rewrite.clone(),
    };
    // Endpoint 3 negotiated RTX: payload type 101 repairs 100 (its numbering), SSRC 77.
    let rtx = Rtx::new(&[(100, 101)], &[(10, 77)], || 500)
        .unwrap()
        .map(Arc::new);
    c.apply(&Delta {
        generation: 2,
        ops: vec![add(2, &s2), add(3, &s3), Op::SetRtx { uid: 3, rtx }],
    });
    // The receivers' RTCP is SRTCP (index `i`).
    let srtcp = |s: &srtp::Session, plain: Vec<u8>, i: u32| {
        let mut out = [0u8; 256];
        let n = s.protect_rtcp(&plain, i, &mut out).unwrap();
        out[..n].to_vec()
    };
    c.set_now(5);
    // A NACK first, so the stream is cached.
    let _ = c.handle(&mut srtcp(&s2, nack(2, 10, 1), 1), a(2));
    // The copies of packet 42 as each receiver got it.
    let mut pkt = rtp(10, 42, 9, b"the payload");
    pkt[1] = 96;
    let orig = pkt.clone();
    let v = c.handle(&mut pkt, a(1)).unwrap();
    let plain = v.plain(&pkt);
    let mut sent = std::collections::HashMap::new();
    for peer in v.dests.iter() {
        let mut out = [0u8; 256];
        let s = peer.srtp.as_ref().unwrap();
        let n = v
            .protect(plain, s, peer.rewrite.as_deref(), &mut out)
            .unwrap();
        sent.insert(peer.addr.port(), out[..n].to_vec());
    }
    // Both lose it.
    c.set_now(6);
    assert!(c.handle(&mut srtcp(&s2, nack(2, 10, 42), 2), a(2)).is_err());
    assert!(c.handle(&mut srtcp(&s3, nack(3, 10, 42), 1), a(3)).is_err());
    // Asked again at once (a browser re-asks every 100 ms): not resent again so soon, nor
    // passed on.
    let twice = c.handle(&mut srtcp(&s3, nack(3, 10, 42), 2), a(3));
    assert_eq!(twice.err(), Some(DropReason::NackAnswered), "asked twice");
    let mut got = repairs(&mut c);
    assert_eq!(got.len(), 2);
    assert_eq!(c.counters.nack_unanswered, 1);
    // Asked again later: resent again.
    c.set_now(6 + repair::recent::RESEND_MS);
    let again = c.handle(&mut srtcp(&s3, nack(3, 10, 42), 3), a(3));
    assert_eq!(again.err(), Some(DropReason::NackAnswered));
    got.extend(repairs(&mut c));
    assert_eq!(got.len(), 3);
    // Endpoint 2: byte for byte what it was sent (same index, same key: nothing new).
    assert_eq!(got[0], (2, sent[&2].clone()));
    // Endpoint 3: RTX, numbered from its own counter, with the original sequence number.
    for (i, (port, bytes)) in got[1..].iter().enumerate() {
        assert_eq!(*port, 3);
        let mut b = bytes.clone();
        let index = 500 + i as u64;
        let n = s3.unprotect_rtp(&mut b, index).unwrap();
        let mut want = rtp(77, index as u16, 9, b"\x00\x2athe payload");
        want[1] = 101;
        assert_eq!(b[..n], want[..]);
    }
    assert_ne!(got[1].1, sent[&3]);
    let _ = orig;
}

#[test]
fn a_bridge_behind_a_relay_answers_from_its_own_cache() {
    let (ka, kb) = ([1u8; 16], [2u8; 16]);
    let origin = a(9);
    let up = Arc::new(relay::Relay::new(1, origin, 7, &ka, &kb).unwrap());
    let mut b = TableBuilder::new();
    let conf = b.conference();
    b.endpoint(conf, 1, &[], Some(a(1)), None);
    let mut c = Core::new(b.build(1)).with_repair_cache(Some(Arc::new(RepairCache::new(4, 64))));
    c.apply(&Delta {
        generation: 2,
        ops: vec![Op::AddRelay {
            conf,
            relay: up.clone(),
        }],
    });
    let at_origin = relay::Relay::new(2, a(0), 7, &kb, &ka).unwrap();
    let from_origin = |seq: u16, c: &mut Core| {
        let mut out = [0u8; 2048];
        let n = at_origin
            .seal(
                0,
                u64::from(seq),
                &rtp(500, seq, 0, &[seq as u8; 50]),
                &mut out,
            )
            .unwrap();
        c.handle(&mut out[..n], origin).map(|v| v.dests.len())
    };
    c.set_now(100);
    assert_eq!(from_origin(1, &mut c), Ok(1));
    // The first NACK goes up the relay (towards the sender's bridge) and starts the cache.
    let mut n = nack(1, 500, 1);
    let v = c.handle(&mut n, a(1)).unwrap();
    assert_eq!(v.relays.len(), 1);
    for seq in 2..=4 {
        assert_eq!(from_origin(seq, &mut c), Ok(1));
    }
    // A loss on this side is repaired here: nothing crosses the relay.
    assert_eq!(
        c.handle(&mut nack(1, 500, 3), a(1)).err(),
        Some(DropReason::NackAnswered)
    );
    assert_eq!(repairs(&mut c), [(1, rtp(500, 3, 0, &[3; 50]))]);
}

#[test]
fn a_removed_senders_stream_answers_no_more() {
    let mut c = core();
    c.set_now(1);
    let _ = c.handle(&mut nack(20, 10, 1), a(2));
    send(&mut c, 7);
    c.apply(&Delta {
        generation: 2,
        ops: vec![Op::RemoveEndpoint { uid: 1 }],
    });
    assert!(c.handle(&mut nack(20, 10, 7), a(2)).is_err());
    assert!(repairs(&mut c).is_empty());
}

#[test]
fn a_plain_senders_duplicate_never_reaches_srtp_receivers_twice() {
    let p = srtp::Profile::AeadAes128Gcm;
    let s2 = Arc::new(srtp::Session::new(p, &[2; 16], &[2; 12]).unwrap());
    let mut b = TableBuilder::new();
    let conf = b.conference();
    b.endpoint(conf, 1, &[10], Some(a(1)), None);
    let mut c = Core::new(b.build(1));
    c.apply(&Delta {
        generation: 2,
        ops: vec![Op::AddEndpoint {
            conf,
            uid: 2,
            ssrcs: Box::new([]),
            addr: Some(a(2)),
            srtp: Some((s2.clone(), s2)),
            claim: None,
            webrtc: false,
            rewrite: None,
        }],
    });
    assert!(c.handle(&mut rtp(10, 7, 0, b"first"), a(1)).is_ok());
    // The sender retransmits 7 with other bytes: under the receiver's key, index 7 is used.
    assert_eq!(
        c.handle(&mut rtp(10, 7, 0, b"again"), a(1)).err(),
        Some(DropReason::SrtpReplay)
    );
    assert!(c.handle(&mut rtp(10, 8, 0, b"next"), a(1)).is_ok());
    // Between plain endpoints only, nothing changes: the duplicate goes on.
    let mut c = core();
    assert_eq!(send(&mut c, 7), [2, 3]);
    assert_eq!(send(&mut c, 7), [2, 3]);
}

/// Endpoint 1 (port 1) publishes a simulcast group of SSRCs 10 and 11 (cached, with a
/// `cache`); endpoint 2 (port 2) receives it as one stream on SSRC 5000, from sequence number 7.
fn simulcast_core(cache: bool) -> Core {
    use super::simulcast::group::{Group, SimReceive};
    let mut b = TableBuilder::new();
    let conf = b.conference();
    b.endpoint(conf, 1, &[10, 11], Some(a(1)), None);
    b.endpoint(conf, 2, &[20], Some(a(2)), None);
    let mut c = Core::new(b.build(1));
    if cache {
        c = c.with_repair_cache(Some(Arc::new(RepairCache::new(4, 64))));
    }
    c.apply(&Delta {
        generation: 2,
        ops: vec![
            Op::SetSimulcast {
                conf,
                owner: 1,
                group: Some(Arc::new(Group::new(1, &[10, 11]))),
            },
            Op::SetSimReceive {
                uid: 2,
                sim: Some(Arc::new(SimReceive::new(1, 5000, 7, 0))),
            },
            Op::CacheStreams {
                conf,
                ssrcs: [10, 11].into(),
            },
        ],
    });
    c.set_now(1);
    c
}

#[test]
fn a_simulcast_receiver_gets_its_keyframe_asked_for_with_the_cache_disabled() {
    // No retransmission cache: the extras the engine drains still carry the keyframe request.
    let mut c = simulcast_core(false);
    // An inter frame of layer 0: the receiver waits for a keyframe, which the bridge asks for.
    let mut p = rtp(10, 1, 0, &[0x90, 0x80, 0x05, 0x31, 0, 0, 0, 0]);
    let _ = c.handle(&mut p, a(1));
    assert!(c.has_repairs());
    // Both to the publisher: its REMB (it hears no other estimate) and the PLI.
    let got = repairs(&mut c);
    assert!(got.iter().all(|(port, _)| *port == 1), "{got:?}");
    let fmts: Vec<(u8, u8)> = got.iter().map(|(_, p)| (p[1], p[0] & 0x1f)).collect();
    assert_eq!(fmts, [(206, 15), (206, 1)], "a REMB, then a PLI");
    assert_eq!(&got[0].1[12..16], b"REMB");
    assert_eq!(
        &got[1].1[8..12],
        &10u32.to_be_bytes(),
        "for the layer it waits for"
    );
}

#[test]
fn a_simulcast_receivers_nack_is_answered_with_the_very_copy_it_was_sent() {
    let mut c = simulcast_core(true);
    // VP8 with a 15-bit picture id; the first packet starts a keyframe.
    let vp8 = |pid: u16, key: bool| {
        let tag = if key { 0x30 } else { 0x31 };
        vec![0x90, 0x80, 0x80 | (pid >> 8) as u8, pid as u8, tag, 1, 2, 3]
    };
    // Layer 0 (the only one sending) from its keyframe on: the receiver's copies, as the
    // engine writes them, run from its first sequence number (7) on its SSRC.
    let mut sent = Vec::new();
    for (i, seq) in (40_000u16..40_004).enumerate() {
        let mut p = rtp(10, seq, 9_000, &vp8(300 + i as u16, i == 0));
        let v = c.handle(&mut p, a(1)).unwrap();
        let plain = v.plain(&p).to_vec();
        for (slot, peer) in v.dests.iter_slots() {
            assert_eq!(v.copy_kind(slot, peer), CopyKind::Written);
            let mut out = [0u8; 2048];
            let n = v.write(slot, peer, &plain, &mut out).unwrap();
            sent.push(out[..n].to_vec());
        }
    }
    assert_eq!(sent.len(), 4);
    assert_eq!(&sent[1][2..4], &8u16.to_be_bytes());
    assert_eq!(&sent[1][8..12], &5000u32.to_be_bytes());
    repairs(&mut c); // the publisher's REMB
    // The receiver NACKs its own number 8: it gets the same bytes again, nothing goes on.
    assert_eq!(
        c.handle(&mut nack(20, 5000, 8), a(2)).err(),
        Some(DropReason::NackAnswered)
    );
    assert_eq!(repairs(&mut c), [(2, sent[1].clone())]);
    // A number from before its first segment: nobody can answer it, and it goes nowhere.
    assert_eq!(
        c.handle(&mut nack(20, 5000, 3), a(2)).err(),
        Some(DropReason::NackAnswered)
    );
    assert!(repairs(&mut c).is_empty());
    assert_eq!(
        (
            c.counters.nack_rx,
            c.counters.nack_repaired,
            c.counters.nack_forwarded
        ),
        (2, 1, 0)
    );
    assert_eq!(c.counters.nack_unanswered, 1);
}
