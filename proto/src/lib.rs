//! Lifeboat's wire: the gRPC types generated from `proto/lifeboat.proto` ([`pb`]) and the
//! TLS transport every process uses ([`transport`]).
//!
//! There is no plaintext path. Clients dial with [`transport::connect`], which performs
//! TLS itself (rustls, aws-lc-rs) so that it can pin the fleet CA by fingerprint during
//! enrollment and present a client certificate otherwise. The controller accepts with
//! [`transport::incoming`], which picks the TLS configuration from the client's SNI:
//! [`lifeboat_core::pki::ENROLL_NAME`] gets a handshake without a client certificate and
//! can only reach enrollment; every other connection must present a certificate from the
//! fleet CA or is refused during the handshake. The authenticated peer
//! ([`transport::Peer`]) rides along in every request's extensions.

pub mod docs;
pub mod http;
pub mod logs;
pub mod states;
pub mod transport;

/// Generated protobuf and gRPC types (package `lifeboat.v1`).
#[allow(clippy::all, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("lifeboat.v1");
}

/// The request metadata key that names the backup job a `PutChunks` upload belongs to.
pub const JOB_METADATA: &str = "lifeboat-job";

/// The largest gRPC message either side accepts: one maximum-size chunk plus framing.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// HTTP/2 flow-control windows and frame size for both ends. Chunks are up to 4 MiB; with
/// the 64 KiB protocol defaults every megabyte would cost a dozen window round trips.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
pub const MAX_FRAME: u32 = 1024 * 1024;

/// Streams one connection may have open at once on the controller. An agent uses a handful
/// (its session, a few upload or fetch lanes, a commit); a peer that opens more waits (a
/// well-behaved HTTP/2 client queues them) or is refused, instead of starting a handler per
/// stream without bound. (tonic leaves HTTP/2's limit unset unless told: hyper's default of
/// 200 does not apply to a tonic server.) 100 is the minimum RFC 9113 recommends.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;
