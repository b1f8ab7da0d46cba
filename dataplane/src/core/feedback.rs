//! Where RTCP feedback goes: to the local endpoints that send the media SSRCs it names, and for
//! the SSRCs no local endpoint sends, over the relay their media arrives over
//! ([`RemoteSenders`]), or to every relay in the fallback the caller gives when that is not known.

use std::sync::Arc;

use super::table::{Conference, Table};
use super::verdict::{Dests, Select};
use super::{RemoteSenders, relay, rtcp};

/// What feedback is about, seen from one bridge.
pub(super) struct Feedback {
    /// The local peers that send its media SSRCs (never the feedback's own sender).
    pub(super) select: Select,
    /// Some target SSRC has a local sender (the feedback's own sender included).
    pub(super) here: bool,
    /// Some target SSRC has no local sender (it may be behind a relay).
    pub(super) elsewhere: bool,
    /// The relays (indices in the conference's) whose media the `elsewhere` SSRCs arrive over.
    over: [u32; rtcp::MAX_TARGETS],
    /// How many of `over`.
    n_over: u8,
    /// Some `elsewhere` SSRC arrives over no relay known.
    unowned: bool,
}

impl Feedback {
    /// The relays the feedback goes to: those its remote SSRCs arrive over, or `fallback`
    /// when some remote SSRC's relay is not known.
    #[inline]
    pub(super) fn relays<'t>(
        &self,
        conf: &'t Conference,
        fallback: &'t [Arc<relay::Relay>],
    ) -> Dests<'t, Arc<relay::Relay>> {
        if !self.elsewhere {
            Dests::none()
        } else if self.unowned {
            Dests::all(fallback)
        } else {
            Dests::new(
                &conf.relays,
                Select::Only {
                    slots: self.over,
                    n: self.n_over,
                },
            )
        }
    }
}

/// Where feedback about `targets` goes in conference `conf`: local senders by the table, remote
/// ones by the relay their media arrives over (never back to relay `from`, the one the feedback
/// came over).
pub(super) fn feedback_targets(
    table: &Table,
    senders: &RemoteSenders,
    conf_idx: u32,
    sender: Option<u32>,
    targets: &[u32],
    from: Option<u64>,
) -> Feedback {
    let conf = table.conf(conf_idx);
    let mut f = Feedback {
        select: Select::AllBut(usize::MAX),
        here: false,
        elsewhere: false,
        over: [0; rtcp::MAX_TARGETS],
        n_over: 0,
        unowned: false,
    };
    let mut slots = [0u32; rtcp::MAX_TARGETS];
    let mut n = 0u8;
    for &ssrc in targets {
        let Some(&owner) = conf.ssrc_owner.get(&ssrc) else {
            f.elsewhere = true;
            let at = senders
                .relay_of(conf_idx, ssrc)
                .and_then(|uid| conf.relays.iter().position(|r| r.uid as u32 == uid));
            match at {
                Some(i) if Some(conf.relays[i].uid) == from => {}
                Some(i) => {
                    let i = i as u32;
                    let n_over = usize::from(f.n_over);
                    if !f.over[..n_over].contains(&i) {
                        f.over[n_over] = i;
                        f.n_over += 1;
                    }
                }
                None => f.unowned = true,
            }
            continue;
        };
        f.here = true;
        if Some(owner) == sender {
            continue;
        }
        if let Some(slot) = table.ep(owner).slot
            && !slots[..usize::from(n)].contains(&slot)
        {
            slots[usize::from(n)] = slot;
            n += 1;
        }
    }
    f.select = Select::Only { slots, n };
    f
}
