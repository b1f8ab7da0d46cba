//! The gRPC surface: precise status codes with messages naming the field, failed requests change
//! nothing, and standard tools work (health, reflection).

mod common;

use common::{Bridge, Party, assert_exact, exchange};
use ringbridge_proto::v1 as pb;
use tonic::Code;

fn add(conf: &str, ep: &str, ssrcs: &[u32], addr: &str) -> pb::AddEndpointRequest {
    pb::AddEndpointRequest {
        conference_id: conf.into(),
        endpoint_id: ep.into(),
        ssrcs: ssrcs.to_vec(),
        remote_addr: addr.into(),
        srtp: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_field_and_change_nothing() {
    let mut b = Bridge::start("mio").await;
    let ps: Vec<Party> = (0..2)
        .map(|i| Party::new(&format!("e{i}"), 10 + i))
        .collect();
    b.conference("c").await;
    for p in &ps {
        b.add("c", p, false).await;
    }
    let taken = ps[0].addr().to_string();
    let cases: Vec<(pb::AddEndpointRequest, Code, &str)> = vec![
        (
            add("", "x", &[1], ""),
            Code::InvalidArgument,
            "conference_id",
        ),
        (add("c", "", &[1], ""), Code::InvalidArgument, "endpoint_id"),
        (
            add("c", "x", &[1], "localhost"),
            Code::InvalidArgument,
            "remote_addr",
        ),
        (
            add("c", "x", &[1], "127.0.0.1:0"),
            Code::InvalidArgument,
            "remote_addr",
        ),
        (
            add("c", "x", &[1], "[::1]:5000"),
            Code::InvalidArgument,
            "remote_addr",
        ),
        (add("c", "x", &[], ""), Code::InvalidArgument, "ssrcs"),
        (add("nope", "x", &[1], ""), Code::NotFound, "conference_id"),
        (add("c", "e0", &[1], ""), Code::AlreadyExists, "endpoint_id"),
        (add("c", "x", &[11], ""), Code::AlreadyExists, "ssrcs"),
        (
            add("c", "x", &[1], &taken),
            Code::AlreadyExists,
            "remote_addr",
        ),
    ];
    for (req, code, field) in cases {
        let what = format!("{req:?}");
        let e = b.client.add_endpoint(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{what}: {}", e.message());
        assert!(
            e.message().starts_with(field),
            "{what}: message {:?}",
            e.message()
        );
    }
    let e = b
        .client
        .create_conference(pb::CreateConferenceRequest {
            conference_id: "c".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = b
        .client
        .delete_conference(pb::DeleteConferenceRequest {
            conference_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = b
        .client
        .remove_endpoint(pb::RemoveEndpointRequest {
            conference_id: "c".into(),
            endpoint_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message().starts_with("endpoint_id")),
        (Code::NotFound, true)
    );

    // Nothing was added or lost: the table is as programmed and still forwards.
    let list = b.list().await;
    assert_eq!(list.conferences.len(), 1);
    let ids: Vec<_> = list.conferences[0]
        .endpoints
        .iter()
        .map(|e| e.endpoint_id.as_str())
        .collect();
    assert_eq!(ids, ["e0", "e1"]);
    let refs: Vec<&Party> = ps.iter().collect();
    let got = exchange(&refs, b.media, 20, &[20, 20]);
    assert_exact(&refs, &got, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let b = Bridge::start("mio").await;
    let url = format!("http://{}", b.api);
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "ringbridge.v1.Bridge"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "{service:?}");
    }
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in ["ringbridge.v1.Bridge", "grpc.health.v1.Health"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}

/// A second bridge asked for a media port another socket holds refuses to start, saying so,
/// instead of joining the first one's `SO_REUSEPORT` group (the kernel would then hash some
/// flows to sockets the second never reads, and some of the first's to the second). The same
/// check waits for a killed bridge's io_uring sockets, which the kernel closes a moment after
/// the process: see `xdp_engine::a_killed_bridge_leaves_nothing_attached_...`, where this was
/// found (whole flows lost on the restarted bridge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_port_in_use_is_refused_not_shared() {
    let first = common::Bridge::start("uring").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringbridge"))
        .args(["--api", "127.0.0.1:0", "--media"])
        .arg(first.media.to_string())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run ringbridge");
    assert!(!out.status.success(), "the second bridge started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("media address {} is in use", first.media)),
        "{err}"
    );
}
