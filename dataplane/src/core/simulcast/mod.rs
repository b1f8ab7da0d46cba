//! Simulcast: a publisher's encodings of one video (layers) forwarded as one stream per
//! receiver. Sans-IO building blocks: the VP8 payload descriptor ([`vp8`]), one receiver's
//! layer switching and rewriting ([`forward`]), and its layer choice from its bandwidth
//! estimate and limits ([`policy`]).

pub mod forward;
pub mod group;
pub mod policy;
pub mod select;
pub mod vp8;

#[cfg(test)]
mod trace_tests;
