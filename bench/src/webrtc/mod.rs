//! The client side of a WebRTC endpoint as the benchmarks play it, the way
//! `dataplane/tests/webrtc.rs` does: a nominating ICE check written with our STUN writer, dimpl's
//! DTLS *client* with a certificate of its own, and the SRTP sessions its export yields. Sans-IO
//! pieces only here: the binaries bring the sockets and the clock, or use
//!
//! - [`join`]: many clients adding themselves to a bridge and connecting at once;
//! - [`stream`]: one SRTP stream from a connected publisher to connected viewers, counted by
//!   measuring window.

pub mod join;
pub mod stream;

use std::sync::Arc;
use std::time::Instant;

use dimpl::{Dtls, DtlsCertificate, Output, SrtpProfile};
use ringbridge_dataplane::srtp::{Profile, Session};
use ringbridge_dataplane::webrtc::dtls::{Fingerprint, HashFunction};
use ringbridge_dataplane::webrtc::stun::{self, Class, IntegrityKey, MessageWriter, TransactionId};
use ringbridge_proto::v1 as pb;

/// The DTLS version a client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Version {
    /// DTLS 1.2 only (Chrome, Safari).
    #[serde(rename = "1.2")]
    V12,
    /// DTLS 1.3 only (what recent Firefox gets).
    #[serde(rename = "1.3")]
    V13,
}

impl Version {
    /// "1.2" or "1.3".
    pub fn name(self) -> &'static str {
        match self {
            Self::V12 => "1.2",
            Self::V13 => "1.3",
        }
    }
}

/// A client's certificate and its `a=fingerprint` value.
#[derive(Clone)]
pub struct ClientCert {
    /// The certificate and key, as dimpl takes them.
    pub cert: DtlsCertificate,
    /// `sha-256 AB:CD:...`, what the offer (here: AddEndpoint) names.
    pub fingerprint: String,
}

impl ClientCert {
    /// A fresh self-signed certificate.
    pub fn generate() -> anyhow::Result<Self> {
        let cert = dimpl::certificate::generate_self_signed_certificate()?;
        let fingerprint = Fingerprint::of(HashFunction::Sha256, &cert.certificate).to_string();
        Ok(Self { cert, fingerprint })
    }
}

/// dimpl's DTLS client (the active side, as a browser is against the bridge) offering
/// `version`, with dimpl's default settings.
pub fn dtls_client(version: Version, cert: &ClientCert, now: Instant) -> Dtls {
    let config = Arc::new(dimpl::Config::default());
    let mut dtls = match version {
        Version::V12 => Dtls::new_12(config, cert.cert.clone(), now),
        Version::V13 => Dtls::new_13(config, cert.cert.clone(), now),
    };
    dtls.set_active(true);
    dtls
}

/// What a client reported while it was polled.
#[derive(Debug, Default)]
pub struct ClientProgress {
    /// dimpl reported the handshake complete.
    pub connected: bool,
    /// The exported keying material and its profile.
    pub material: Option<(SrtpProfile, Vec<u8>)>,
    /// When the client wants `handle_timeout` next.
    pub timeout: Option<Instant>,
}

impl ClientProgress {
    /// Connected with keys.
    pub fn done(&self) -> bool {
        self.connected && self.material.is_some()
    }
}

/// Polls `client` until it has nothing more, handing each datagram to `send`.
pub fn poll_client(client: &mut Dtls, progress: &mut ClientProgress, mut send: impl FnMut(&[u8])) {
    let mut buf = [0u8; 2048];
    loop {
        match client.poll_output(&mut buf) {
            Output::Packet(p) => send(p),
            Output::Connected => progress.connected = true,
            Output::KeyingMaterial(km, p) => progress.material = Some((p, km.to_vec())),
            Output::Timeout(t) => {
                progress.timeout = Some(t);
                break;
            }
            _ => {}
        }
    }
}

/// The SRTP sessions of a client: it protects with `tx` (the client's write key) and
/// unprotects what the bridge sends with `rx` (the server's).
pub struct Keys {
    /// Protects what the client sends.
    pub tx: Session,
    /// Unprotects what the bridge sends it.
    pub rx: Session,
}

impl Keys {
    /// Splits a client's export (RFC 5764 §4.2: client key | server key | client salt | server
    /// salt); `None` for a profile we do not implement or a wrong length.
    pub fn from_export(profile: SrtpProfile, km: &[u8]) -> Option<Self> {
        let profile = match profile {
            SrtpProfile::AEAD_AES_256_GCM => Profile::AeadAes256Gcm,
            SrtpProfile::AEAD_AES_128_GCM => Profile::AeadAes128Gcm,
            SrtpProfile::AES128_CM_SHA1_80 => Profile::AesCm128HmacSha1_80,
            _ => return None,
        };
        let (k, s) = (profile.key_len(), profile.salt_len());
        if km.len() != 2 * (k + s) {
            return None;
        }
        Some(Self {
            tx: Session::new(profile, &km[..k], &km[2 * k..2 * k + s]).ok()?,
            rx: Session::new(profile, &km[k..2 * k], &km[2 * k + s..]).ok()?,
        })
    }
}

/// The ICE credentials of one endpoint, unique per `id` on a bridge.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The bridge's ufrag (routes the endpoint's checks).
    pub local_ufrag: String,
    /// The bridge's ice-pwd (authenticates them).
    pub local_pwd: String,
    /// The client's ufrag.
    pub remote_ufrag: String,
}

impl Credentials {
    /// Credentials for endpoint number `id` (RFC 8839 lengths: ufrag >= 4, pwd >= 22).
    pub fn new(id: u32) -> Self {
        Self {
            local_ufrag: format!("b{id:07}"),
            local_pwd: format!("p{id:07}{}", "x".repeat(20)),
            remote_ufrag: format!("c{id:07}"),
        }
    }

    /// The USERNAME of the client's checks: `local:remote`.
    pub fn username(&self) -> String {
        format!("{}:{}", self.local_ufrag, self.remote_ufrag)
    }

    /// The AddEndpoint parameters for a client presenting a certificate with `fingerprint`.
    pub fn params(&self, fingerprint: &str) -> pb::WebRtcParams {
        pb::WebRtcParams {
            local_ufrag: self.local_ufrag.clone(),
            local_pwd: self.local_pwd.clone(),
            remote_ufrag: self.remote_ufrag.clone(),
            remote_fingerprint: fingerprint.to_string(),
        }
    }

    /// A Binding request as a controlling browser sends it (nominating when `nominate`).
    pub fn binding_request(&self, nominate: bool, tid: TransactionId) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let n = self
            .write_binding_request(&mut buf, nominate, tid)
            .expect("a Binding request fits 512 bytes");
        buf.truncate(n);
        buf
    }

    fn write_binding_request(
        &self,
        buf: &mut [u8],
        nominate: bool,
        tid: TransactionId,
    ) -> Result<usize, stun::StunError> {
        let mut w = MessageWriter::new(buf, Class::Request, stun::BINDING, tid)?;
        w.username(&self.username())?;
        w.priority(0x6e7f_1eff)?;
        if nominate {
            w.use_candidate()?;
        }
        w.ice_controlling(0x1234_5678_9abc_def0)?;
        w.message_integrity(&IntegrityKey::short_term(&self.local_pwd))?;
        w.fingerprint()?;
        Ok(w.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringbridge_dataplane::webrtc::stun::Message;

    #[test]
    fn binding_request_parses_and_verifies() {
        let c = Credentials::new(42);
        let tid = TransactionId::random();
        let raw = c.binding_request(true, tid);
        let m = Message::parse(&raw).unwrap();
        assert!(m.is_binding_request());
        assert!(m.use_candidate());
        assert_eq!(m.username(), Some(c.username().as_str()));
        m.verify_integrity(&IntegrityKey::short_term(&c.local_pwd))
            .unwrap();
        m.verify_fingerprint().unwrap();
        assert!(c.local_pwd.len() >= 22 && c.local_ufrag.len() >= 4);
    }

    #[test]
    fn export_splits_like_rfc_5764() {
        let km: Vec<u8> = (0..88).collect();
        assert!(Keys::from_export(SrtpProfile::AEAD_AES_256_GCM, &km).is_some());
        assert!(Keys::from_export(SrtpProfile::AEAD_AES_256_GCM, &km[1..]).is_none());
    }
}
