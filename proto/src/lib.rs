//! Generated gRPC types and services of ringbridge (`ringbridge.v1`).

#![allow(missing_docs, clippy::all)]

/// Package `ringbridge.v1`.
pub mod v1 {
    tonic::include_proto!("ringbridge.v1");
}

/// Encoded `FileDescriptorSet` of all ringbridge protos, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ringbridge_descriptor.bin"));
