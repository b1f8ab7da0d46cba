//! Generated gRPC types and services of ringbridge (`ringbridge.v1`).

pub mod codec;

/// Package `ringbridge.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("ringbridge.v1");
}

/// Encoded `FileDescriptorSet` of all ringbridge protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ringbridge_descriptor.bin"));

/// SRTP protection profiles as the API names them (`SrtpParams.profile`), with the length of
/// their master key + salt. The data plane implements them; the focus needs the lengths to
/// validate a participant's key and to generate the bridge's key before calling any bridge.
pub mod srtp {
    /// `(profile name, master key length, master salt length)`.
    pub const PROFILES: [(&str, usize, usize); 4] = [
        ("AES_CM_128_HMAC_SHA1_80", 16, 14),
        ("AES_CM_128_HMAC_SHA1_32", 16, 14),
        ("AEAD_AES_128_GCM", 16, 12),
        ("AEAD_AES_256_GCM", 32, 12),
    ];

    /// Bytes of master key + salt `profile` needs; `None` for an unknown profile.
    pub fn master_len(profile: &str) -> Option<usize> {
        PROFILES
            .iter()
            .find(|(n, _, _)| *n == profile)
            .map(|(_, k, s)| k + s)
    }
}
