//! Runs the focus's [`Plan`]s against the bridges' gRPC APIs: calls in order, each with a
//! deadline, stopping at the first failure. Holds no lock across a call (the client cache is
//! locked only to look up or insert a channel). Bridge statuses become [`CallError`]s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ringbridge_proto::v1 as pb;
use ringbridge_proto::v1::bridge_client::BridgeClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::focus::{Applied, BridgeCall, Call, CallError, CallResult, Plan};
use crate::store::Participant;

/// Runs plans.
#[derive(Debug)]
pub struct Executor {
    channels: Mutex<HashMap<String, (String, Channel)>>,
    deadline: Duration,
}

fn add_request(conference: &str, endpoint: &str, p: &Participant) -> pb::AddEndpointRequest {
    pb::AddEndpointRequest {
        conference_id: conference.into(),
        endpoint_id: endpoint.into(),
        ssrcs: p.ssrcs.clone(),
        remote_addr: p.remote_addr.clone(),
        srtp: p.srtp.as_ref().map(|k| pb::SrtpParams {
            profile: k.profile.clone(),
            endpoint_key: k.endpoint_key.clone(),
            bridge_key: k.bridge_key.clone(),
        }),
    }
}

impl Executor {
    /// An executor whose every bridge call has `deadline`.
    pub fn new(deadline: Duration) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            deadline,
        }
    }

    /// The deadline of every call.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The channel to the bridge at `api_addr` (one HTTP/2 connection per bridge, reused by
    /// calls and health probes).
    pub fn channel(&self, bridge: &str, api_addr: &str) -> Result<Channel, CallError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((a, c)) = channels.get(bridge)
            && a == api_addr
        {
            return Ok(c.clone());
        }
        let ch = Channel::from_shared(format!("http://{api_addr}"))
            .map_err(|e| CallError::Unavailable(format!("api address {api_addr:?}: {e}")))?
            .connect_timeout(self.deadline)
            .connect_lazy();
        channels.insert(bridge.into(), (api_addr.into(), ch.clone()));
        Ok(ch)
    }

    /// Runs `plan`'s calls in order; returns one result per call made (stops after a failure).
    pub async fn run(&self, plan: &Plan) -> Vec<CallResult> {
        let mut results = Vec::with_capacity(plan.calls.len());
        for c in &plan.calls {
            let r = self.call(c).await;
            let failed = r.is_err();
            results.push(r);
            if failed {
                break;
            }
        }
        results
    }

    /// Makes one call within the deadline.
    pub async fn call(&self, c: &BridgeCall) -> CallResult {
        let mut client = BridgeClient::new(self.channel(&c.bridge, &c.api_addr)?);
        let deadline = self.deadline;
        // The deadline travels with the request too (grpc-timeout), so the bridge can give up.
        fn req<T>(m: T, d: Duration) -> tonic::Request<T> {
            let mut r = tonic::Request::new(m);
            r.set_timeout(d);
            r
        }
        let call = async {
            match &c.call {
                Call::Create { conference } => client
                    .create_conference(req(
                        pb::CreateConferenceRequest {
                            conference_id: conference.clone(),
                        },
                        deadline,
                    ))
                    .await
                    .map(|_| ()),
                Call::Add {
                    conference,
                    endpoint,
                    participant,
                    ..
                } => client
                    .add_endpoint(req(
                        add_request(conference, endpoint, participant),
                        deadline,
                    ))
                    .await
                    .map(|_| ()),
                Call::Remove {
                    conference,
                    endpoint,
                } => client
                    .remove_endpoint(req(
                        pb::RemoveEndpointRequest {
                            conference_id: conference.clone(),
                            endpoint_id: endpoint.clone(),
                        },
                        deadline,
                    ))
                    .await
                    .map(|_| ()),
                Call::Delete { conference } => client
                    .delete_conference(req(
                        pb::DeleteConferenceRequest {
                            conference_id: conference.clone(),
                        },
                        deadline,
                    ))
                    .await
                    .map(|_| ()),
            }
        };
        let deadline_ms = deadline.as_millis() as u64;
        match tokio::time::timeout(deadline, call).await {
            Err(_) => Err(CallError::Timeout { deadline_ms }),
            Ok(Ok(())) => Ok(Applied::Done),
            Ok(Err(s)) => classify(&c.call, s, deadline_ms),
        }
    }
}

/// Maps a bridge's status for `call`: "already so" outcomes the call tolerates are success.
fn classify(call: &Call, s: Status, deadline_ms: u64) -> CallResult {
    let msg = s.message().to_string();
    match (s.code(), call) {
        (Code::AlreadyExists, Call::Create { .. }) => Ok(Applied::AlreadyThere),
        (
            Code::AlreadyExists,
            Call::Add {
                if_absent: true, ..
            },
        ) => Ok(Applied::AlreadyThere),
        (Code::NotFound, Call::Remove { .. } | Call::Delete { .. }) => Ok(Applied::AlreadyThere),
        (Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition, _) => {
            Err(CallError::Invalid(msg))
        }
        (Code::AlreadyExists, _) => Err(CallError::Exists(msg)),
        (Code::NotFound, _) => Err(CallError::NotFound(msg)),
        (Code::DeadlineExceeded | Code::Cancelled, _) => Err(CallError::Timeout { deadline_ms }),
        _ => Err(CallError::Unavailable(msg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_call_outcomes() {
        let create = Call::Create {
            conference: "c".into(),
        };
        let delete = Call::Delete {
            conference: "c".into(),
        };
        let add = |if_absent| Call::Add {
            conference: "c".into(),
            endpoint: "e".into(),
            participant: Participant {
                region: String::new(),
                ssrcs: vec![],
                remote_addr: String::new(),
                srtp: None,
            },
            if_absent,
        };
        let exists = || Status::already_exists("x");
        assert_eq!(classify(&create, exists(), 1), Ok(Applied::AlreadyThere));
        assert_eq!(classify(&add(true), exists(), 1), Ok(Applied::AlreadyThere));
        assert_eq!(
            classify(&add(false), exists(), 1),
            Err(CallError::Exists("x".into()))
        );
        assert_eq!(
            classify(&delete, Status::not_found("gone"), 1),
            Ok(Applied::AlreadyThere)
        );
        assert_eq!(
            classify(&add(false), Status::invalid_argument("ssrcs: bad"), 1),
            Err(CallError::Invalid("ssrcs: bad".into()))
        );
        assert_eq!(
            classify(&add(false), Status::deadline_exceeded("late"), 7),
            Err(CallError::Timeout { deadline_ms: 7 })
        );
        assert_eq!(
            classify(&add(false), Status::unavailable("refused"), 7),
            Err(CallError::Unavailable("refused".into()))
        );
    }
}
