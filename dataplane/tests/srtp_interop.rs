//! Interop with libsrtp: four participants, one per profile, protect with libsrtp (pylibsrtp,
//! in the venv `make test` creates) and unprotect what the bridge sends them with libsrtp and
//! their own keys; each must recover every other participant's plain packets byte for byte.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::Bridge;
use ringbridge_dataplane::srtp::Profile;
use ringbridge_proto::v1 as pb;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGBRIDGE_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with pylibsrtp: run `make test` (it creates .venv), or set RINGBRIDGE_PYTHON"
    );
    venv
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn libsrtp_peers(engine: &str) {
    let mut b = Bridge::start(engine).await;
    b.conference("interop").await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/libsrtp_peer.py");
    let count = 60u32;
    let n = Profile::ALL.len() as u32;
    let mut peers = Vec::new();
    for (i, profile) in Profile::ALL.into_iter().enumerate() {
        let len = profile.key_len() + profile.salt_len();
        let send: Vec<u8> = (0..len).map(|j| (j * 7 + i * 13) as u8).collect();
        let recv: Vec<u8> = (0..len).map(|j| (j * 11 + i * 5 + 1) as u8).collect();
        let ssrc = 0x5000 + i as u32;
        let mut child = Command::new(python())
            .arg(&script)
            .args(["--name", &format!("lib{i}"), "--profile", profile.name()])
            .args(["--send-key", &hex(&send), "--recv-key", &hex(&recv)])
            .args(["--ssrc", &ssrc.to_string(), "--first", "65500"])
            .args(["--count", &count.to_string()])
            .args(["--expect-rtp", &((n - 1) * count).to_string()])
            .args(["--expect-rtcp", &(n - 1).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the libsrtp peer");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("addr=")
            .unwrap_or_else(|| panic!("libsrtp peer said {line:?}"))
            .to_string();
        b.client
            .add_endpoint(pb::AddEndpointRequest {
                conference_id: "interop".into(),
                endpoint_id: format!("lib{i}"),
                ssrcs: vec![ssrc],
                remote_addr: addr,
                srtp: Some(pb::SrtpParams {
                    profile: profile.name().into(),
                    endpoint_key: send,
                    bridge_key: recv,
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        peers.push((child, out));
    }
    for (child, _) in &mut peers {
        writeln!(child.stdin.as_mut().unwrap(), "go {}", b.media).unwrap();
    }
    let results: Vec<serde_json_lite::Report> = tokio::task::block_in_place(|| {
        peers
            .into_iter()
            .map(|(mut child, mut out)| {
                let mut line = String::new();
                out.read_line(&mut line).unwrap();
                assert!(child.wait().unwrap().success(), "libsrtp peer failed");
                serde_json_lite::parse(&line)
            })
            .collect()
    });
    for (i, r) in results.iter().enumerate() {
        assert!(
            r.failures.is_empty(),
            "lib{i}: libsrtp could not unprotect: {:?}",
            r.failures
        );
        let mut want: Vec<&String> = results
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, o)| o.sent.iter())
            .collect();
        want.sort();
        let mut got: Vec<&String> = r.received.iter().collect();
        got.sort();
        assert_eq!(got.len(), want.len(), "lib{i} received");
        assert!(got == want, "lib{i} recovered other bytes than were sent");
        assert_eq!(r.rtcp, n - 1, "lib{i} sender reports");
    }
    let t = b.stats().await.total.unwrap();
    assert_eq!(t.dropped_packets, 0, "{:?}", t.drops);
}

/// Just enough JSON for the peer's one-line report (keeps serde out of this crate's tests).
mod serde_json_lite {
    pub struct Report {
        pub sent: Vec<String>,
        pub received: Vec<String>,
        pub rtcp: u32,
        pub failures: Vec<String>,
    }

    fn strings(line: &str, key: &str) -> Vec<String> {
        let start = line.find(&format!("\"{key}\": [")).expect(key) + key.len() + 5;
        let end = start + line[start..].find(']').unwrap();
        line[start..end]
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub fn parse(line: &str) -> Report {
        let at = line.find("\"rtcp\": ").expect("rtcp") + 8;
        let rtcp = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap();
        Report {
            sent: strings(line, "sent"),
            received: strings(line, "received"),
            rtcp,
            failures: strings(line, "failures"),
        }
    }
}

per_engine!(libsrtp_peers);
