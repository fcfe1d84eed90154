//! Waiting out a broken way to the controller: the restore's reads (its tree's, its
//! chunks' streams, the locates of chunks in the object store) that fail because the way
//! broke, not because the controller refused, are asked again once the agent's session
//! says the controller answers ([`Resume`]).

use std::time::Duration;

use lifeboat_core::backoff::Backoff;

/// How long a restore whose chunk stream broke (the network, a restarted controller)
/// keeps waiting for the controller before it gives up; a partition shorter than this
/// heals without an operator.
const RESUME_WINDOW: Duration = Duration::from_secs(300);
/// Pauses between tries, doubling.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// The agent's session as a restore sees it: whether one is up, how many were
/// established since the agent started, and how many heartbeats the controller answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Link {
    pub sessions: u64,
    pub up: bool,
    pub acks: u64,
}

/// Whether a read that failed this way may be asked again: the way to the controller
/// broke, not the controller's answer (a refusal, a chunk outside the grant). HTTP/2 itself
/// reports some breaks as INTERNAL (a stream the controller reset as it closed a connection
/// its keepalive gave up on: tonic maps a reset without a gRPC status so); those say so in
/// their message, which no answer of the controller's does.
pub(super) fn transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Internal => status.message().starts_with("h2 protocol error"),
        _ => false,
    }
}

/// A restore's read from the controller failing (a request's chunk stream, or a locate of
/// chunks to read from the store), since when, and what to wait for before it is asked
/// again: a new session (the controller then knows the job still runs here), or the
/// controller answering a heartbeat on the session after the break (the session was up
/// all along and only the stream's own connection broke). A session that merely looks up
/// is not enough: one the controller already ended (its keepalive, in a partition) would
/// have the job interrupted and the read refused.
pub(super) struct Resume {
    link: tokio::sync::watch::Receiver<Link>,
    since: Option<tokio::time::Instant>,
    backoff: Backoff,
}

impl Resume {
    pub(super) fn new(link: tokio::sync::watch::Receiver<Link>) -> Resume {
        Resume {
            link,
            since: None,
            backoff: Backoff::new(FIRST_PAUSE, MAX_PAUSE),
        }
    }

    /// The stream delivered: a later break starts a new wait.
    pub(super) fn progressed(&mut self) {
        self.since = None;
        self.backoff.reset();
    }

    /// Waits until the request may be asked again, or says why the restore must stop.
    pub(super) async fn wait(&mut self, status: &tonic::Status) -> Result<(), String> {
        let why = status.message().to_string();
        if !transient(status) {
            return Err(why);
        }
        let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
        let (seen, acked) = {
            let l = self.link.borrow();
            (l.sessions, l.acks)
        };
        tracing::warn!(code = ?status.code(), error = %why, "a restore's read from the controller broke; asking again once it answers");
        tokio::time::sleep(self.backoff.pause()).await;
        loop {
            let l = *self.link.borrow_and_update();
            if l.up && (l.sessions > seen || l.acks > acked) {
                return Ok(());
            }
            if since.elapsed() >= RESUME_WINDOW {
                return Err(format!(
                    "{why} (the controller could not be reached again within {} s)",
                    RESUME_WINDOW.as_secs()
                ));
            }
            tokio::select! {
                _ = self.link.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
