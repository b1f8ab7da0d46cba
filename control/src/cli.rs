//! The `ringbridge-control` client commands (join, leave, route, conferences, bridges, drain,
//! autoscaler), so a
//! person needs no gRPC tooling. Human output by default, JSON with `--json`.

use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::autoscaler_client::AutoscalerClient;
use ringbridge_proto::v1::focus_client::FocusClient;
use ringbridge_proto::v1::registry_client::RegistryClient;
use ringbridge_proto::v1::router_client::RouterClient;
use serde_json::json;
use tonic::transport::Channel;

/// Largest response the CLI accepts (a listing of a big fleet passes gRPC's 4 MiB default).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// A client command.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Put a participant into a conference (created and placed on first join).
    Join {
        /// Conference name.
        #[arg(long)]
        conference: String,
        /// Participant id.
        #[arg(long)]
        participant: String,
        /// Preferred bridge region.
        #[arg(long, default_value = "")]
        region: String,
        /// SSRC the participant sends (repeat for several).
        #[arg(long = "ssrc")]
        ssrcs: Vec<u32>,
        /// Participant address "ip:port" (empty: the bridge latches it).
        #[arg(long, default_value = "")]
        remote_addr: String,
        /// SRTP profile (e.g. AEAD_AES_128_GCM); needs --srtp-key.
        #[arg(long, requires = "srtp_key")]
        srtp_profile: Option<String>,
        /// The participant's SRTP master key + salt, hex. The bridge's key comes back.
        #[arg(long, requires = "srtp_profile")]
        srtp_key: Option<String>,
        /// "participant" in a conference, or "publisher" / "viewer" of a broadcast (a live
        /// stream; a viewer declares no --ssrc and needs --remote-addr).
        #[arg(long, default_value = "participant")]
        role: String,
    },
    /// Remove a participant.
    Leave {
        /// Conference name.
        #[arg(long)]
        conference: String,
        /// Participant id.
        #[arg(long)]
        participant: String,
    },
    /// Which shard a conference routes to.
    Route {
        /// Conference name.
        #[arg(long)]
        conference: String,
    },
    /// Conferences and where they are placed.
    Conferences,
    /// Registered bridges and their state.
    Bridges,
    /// Drain a bridge: no new conferences or participants; after the drain grace the ones
    /// still there move; the autoscaler stops it when empty.
    Drain {
        /// Bridge id.
        bridge: String,
    },
    /// The autoscaler: current and desired bridges, the metric, the scale-down window and
    /// recent decisions with their reasons.
    Autoscaler,
}

/// Runs `cmd` against the control plane at `url`; prints the result.
pub async fn run(url: &str, json_out: bool, cmd: Command) -> anyhow::Result<()> {
    let ch = Channel::from_shared(url.to_string())?.connect().await?;
    let out = match cmd {
        Command::Join {
            conference,
            participant,
            region,
            ssrcs,
            remote_addr,
            srtp_profile,
            srtp_key,
            role,
        } => {
            let srtp = match (srtp_profile, srtp_key) {
                (Some(profile), Some(key)) => Some(pb::SrtpParams {
                    profile,
                    endpoint_key: from_hex(&key)
                        .ok_or_else(|| anyhow::anyhow!("--srtp-key: not hex"))?,
                    bridge_key: Vec::new(),
                }),
                _ => None,
            };
            let r = FocusClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .join(pb::JoinRequest {
                    conference: conference.clone(),
                    participant_id: participant.clone(),
                    region,
                    ssrcs,
                    remote_addr,
                    srtp,
                    role,
                    last_n: 0,
                })
                .await?
                .into_inner();
            let mut text = format!(
                "{participant} joined {conference} on bridge {}: send media to {}",
                r.bridge_id, r.media_addr
            );
            let bridge_key = r.srtp.as_ref().map(|s| to_hex(&s.bridge_key));
            if let (Some(s), Some(k)) = (&r.srtp, &bridge_key) {
                text += &format!(
                    "\n  SRTP {}: media to you is protected with key {k}",
                    s.profile
                );
            }
            (
                json!({"bridge_id": r.bridge_id, "media_addr": r.media_addr, "srtp_bridge_key": bridge_key}),
                text,
            )
        }
        Command::Leave {
            conference,
            participant,
        } => {
            FocusClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .leave(pb::LeaveRequest {
                    conference: conference.clone(),
                    participant_id: participant.clone(),
                })
                .await?;
            (json!({}), format!("{participant} left {conference}"))
        }
        Command::Route { conference } => {
            let r = RouterClient::new(ch)
                .route(pb::RouteRequest {
                    conference: conference.clone(),
                })
                .await?
                .into_inner();
            let text = format!("{conference} -> shard {} at {}", r.shard_id, r.shard_addr);
            (
                json!({"shard_id": r.shard_id, "shard_addr": r.shard_addr}),
                text,
            )
        }
        Command::Conferences => {
            let r = FocusClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .list_placements(pb::ListPlacementsRequest {})
                .await?
                .into_inner();
            let mut text = format!(
                "{:<24} {:<16} {:<22} participants\n",
                "conference", "bridge", "media"
            );
            for c in &r.conferences {
                // One line per bridge of the conference (Octo: a conference may span several).
                for (i, b) in c.bridges.iter().enumerate() {
                    text += &format!(
                        "{:<24} {:<16} {:<22} {}\n",
                        if i == 0 { c.conference.as_str() } else { "" },
                        b.bridge_id,
                        b.media_addr,
                        b.participants.join(",")
                    );
                }
                if let Some(s) = &c.stream {
                    text += &pull_tree(s);
                }
            }
            let j: Vec<_> = r
                .conferences
                .iter()
                .map(|c| {
                    let bridges: Vec<_> = c
                        .bridges
                        .iter()
                        .map(|b| json!({"bridge_id": b.bridge_id, "media_addr": b.media_addr, "participants": b.participants}))
                        .collect();
                    let stream = c.stream.as_ref().map(|s| {
                        let pulls: Vec<_> = s
                            .pulls
                            .iter()
                            .map(|p| json!({"edge": p.edge, "from": p.from, "tier": p.tier, "viewers": p.viewers}))
                            .collect();
                        json!({"origin": s.origin, "publisher": s.publisher, "deepest_tier": s.deepest_tier, "pulls": pulls})
                    });
                    json!({"conference": c.conference, "kind": c.kind, "bridge_id": c.bridge_id, "media_addr": c.media_addr, "participants": c.participants, "bridges": bridges, "stream": stream})
                })
                .collect();
            (json!(j), text.trim_end().to_string())
        }
        Command::Bridges => {
            let r = RegistryClient::new(ch)
                .max_decoding_message_size(MAX_RESPONSE_BYTES)
                .list_bridges(pb::ListBridgesRequest {})
                .await?
                .into_inner();
            let mut text = format!(
                "{:<16} {:<10} {:<9} {:>7} {:>6} {:>7} media\n",
                "bridge", "region", "state", "stress", "confs", "people"
            );
            for b in &r.bridges {
                text += &format!(
                    "{:<16} {:<10} {:<9} {:>7.3} {:>6} {:>7} {}\n",
                    b.bridge_id,
                    b.region,
                    b.state,
                    b.stress,
                    b.conferences,
                    b.participants,
                    b.media_addr
                );
            }
            let j: Vec<_> = r
                .bridges
                .iter()
                .map(|b| json!({"bridge_id": b.bridge_id, "region": b.region, "state": b.state, "stress": b.stress, "conferences": b.conferences, "participants": b.participants, "media_addr": b.media_addr, "api_addr": b.api_addr}))
                .collect();
            (json!(j), text.trim_end().to_string())
        }
        Command::Drain { bridge } => {
            let r = RegistryClient::new(ch)
                .drain_bridge(pb::DrainBridgeRequest {
                    bridge_id: bridge.clone(),
                })
                .await?
                .into_inner();
            (
                json!({"bridge_id": bridge, "participants": r.participants, "grace_ms": r.grace_ms}),
                format!(
                    "{bridge} draining: {} participants, moved in {:.1} s if still there",
                    r.participants,
                    r.grace_ms as f64 / 1000.0
                ),
            )
        }
        Command::Autoscaler => {
            let s = AutoscalerClient::new(ch)
                .get_autoscaler(pb::GetAutoscalerRequest {})
                .await?
                .into_inner();
            let d = |d: &pb::ScalingDecision| {
                json!({"at_ms": d.at_ms, "ready": d.ready, "starting": d.starting, "metric": d.metric,
                       "current": d.current, "raw": d.raw, "desired": d.desired, "reason": d.reason, "stale": d.stale})
            };
            let j = json!({
                "enabled": s.enabled, "actuator": s.actuator, "last": s.last.as_ref().map(d),
                "target_utilization": s.target_utilization, "tolerance": s.tolerance,
                "min_bridges": s.min_bridges, "max_bridges": s.max_bridges,
                "scale_down_window_ms": s.scale_down_window_ms,
                "window": s.window.iter().map(|r| json!({"at_ms": r.at_ms, "bridges": r.bridges})).collect::<Vec<_>>(),
                "decisions": s.decisions.iter().map(d).collect::<Vec<_>>(),
                "draining": s.draining,
            });
            let text = if !s.enabled {
                "autoscaler off (serve --autoscale process|kubernetes)".to_string()
            } else {
                let mut t = format!(
                    "actuator {}  target {:.2} +- {:.0} %  bridges {}..={}  scale-down window {} s\n",
                    s.actuator,
                    s.target_utilization,
                    s.tolerance * 100.0,
                    s.min_bridges,
                    s.max_bridges,
                    s.scale_down_window_ms / 1000
                );
                if let Some(l) = &s.last {
                    t += &format!(
                        "now: {} ready + {} starting = {} current, metric {:.3}, desired {}: {}\n",
                        l.ready, l.starting, l.current, l.metric, l.desired, l.reason
                    );
                }
                let newest = s.window.last().map_or(0, |r| r.at_ms);
                let recs: Vec<String> = s
                    .window
                    .iter()
                    .rev()
                    .take(12)
                    .map(|r| format!("{}@-{:.0}s", r.bridges, (newest - r.at_ms) as f64 / 1000.0))
                    .collect();
                t += &format!("window (newest first): {}\n", recs.join(" "));
                if !s.draining.is_empty() {
                    t += &format!("draining: {}\n", s.draining.join(", "));
                }
                t += "recent decisions:\n";
                for x in s.decisions.iter().rev() {
                    t += &format!(
                        "  {} -> {} (metric {:.3}, {} ready, {} starting): {}\n",
                        x.current, x.desired, x.metric, x.ready, x.starting, x.reason
                    );
                }
                t
            };
            (j, text.trim_end().to_string())
        }
    };
    if json_out {
        println!("{}", out.0);
    } else {
        println!("{}", out.1);
    }
    Ok(())
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A broadcast's pull tree as indented lines: the origin, then each edge under what it pulls
/// from.
pub fn pull_tree(s: &pb::StreamTree) -> String {
    fn below(s: &pb::StreamTree, node: &str, depth: usize, out: &mut String) {
        for p in s.pulls.iter().filter(|p| p.from == node) {
            *out += &format!(
                "{:width$}<- {} (tier {}, {} viewers)\n",
                "",
                p.edge,
                p.tier,
                p.viewers,
                width = 26 + 2 * depth
            );
            below(s, &p.edge, depth + 1, out);
        }
    }
    if s.origin.is_empty() {
        return format!("{:26}(no publisher yet: viewers wait)\n", "");
    }
    let mut out = format!(
        "{:26}origin {} (publisher {}), deepest tier {}\n",
        "", s.origin, s.publisher, s.deepest_tier
    );
    below(s, &s.origin, 0, &mut out);
    out
}
