//! Rooms: conferences for browsers, on the same HTTP address as WHIP and WHEP. A browser in a
//! room publishes its camera and microphone once (`POST /room/{conference}/publish`, a WHIP-like
//! sendonly offer) and watches each other publisher in a session of its own
//! (`POST /room/{conference}/watch/{publisher}`, a WHEP-like recvonly offer); `GET
//! /room/{conference}/events` (Server-Sent Events) tells it who publishes and where every session
//! is, on every change, so it opens and closes watch sessions as people come and go and
//! re-POSTs a session that moved to another bridge (failover, drain). `DELETE
//! /room/{conference}/{session}` ends a session; `GET /room/{conference}` serves the page.
//!
//! Every session is a participant of the conference, placed by the focus like any other (by
//! region, Octo growth, failover, drain, the store): a publish session sends and receives
//! nothing (an empty subscription), a watch session receives exactly its publisher's SSRCs (a
//! subscription to them) with its own payload-type and extension rewrite. One PeerConnection per
//! stream watched is the design of WHIP plus WHEP per publisher: no renegotiation, and each
//! watch is a plain WHEP session any client can open. See `docs/rooms.md`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::answer;
use super::http::{
    HttpError, SESSION_CHARS, answer_text, bad_offer, created, from_status, leave, offer_body,
    place, preflight, query_param, quoted, random_chars, webrtc,
};
use super::sdp;
use crate::core::focus::{Focus, JoinRequest};
use crate::run::service::Control;
use crate::store::{MediaDescription, Role};

/// The room page `GET /room/{conference}` serves.
pub const ROOM_PAGE: &str = include_str!("room.html");

/// Sessions a room's events list at most (a room of ~30 people with a watch each of the others).
pub const LISTED_SESSIONS: usize = 1_000;

/// How often the events stream looks at the room even without an announcement (a backstop: a
/// lagging subscriber, a session that moved without one).
const RESCAN: Duration = Duration::from_secs(2);

/// One publisher of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomPublisher {
    /// Its publish session (the id to watch it by).
    pub session: String,
    /// The bridge it sends to.
    pub bridge: String,
}

/// A room as its events describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomView {
    /// The conference.
    pub conference: String,
    /// Its publishers, by session id.
    pub publishers: Vec<RoomPublisher>,
    /// Every session (publish and watch) and its bridge, at most [`LISTED_SESSIONS`].
    pub sessions: BTreeMap<String, String>,
    /// The dominant speaker's publish session (empty until someone spoke).
    pub speaker: String,
    /// Recent speakers, most recent first.
    pub recent: Vec<String>,
}

/// The room `conference` as the focus has it now (empty when it does not exist).
pub fn view(f: &Focus, conference: &str) -> RoomView {
    let mut v = RoomView {
        conference: conference.into(),
        publishers: Vec::new(),
        sessions: BTreeMap::new(),
        speaker: String::new(),
        recent: Vec::new(),
    };
    if let Some(s) = f.speakers(conference) {
        v.speaker = s.dominant().unwrap_or_default().to_string();
        v.recent = s.recent().to_vec();
    }
    let Some(p) = f.conferences().get(conference) else {
        return v;
    };
    if p.broadcast.is_some() {
        return v;
    }
    for (id, x) in &p.participants {
        if x.webrtc.is_none() {
            continue;
        }
        let bridge = if x.bridge.is_empty() {
            &p.bridge
        } else {
            &x.bridge
        };
        if id.starts_with("pub-") && x.media.is_some() {
            v.publishers.push(RoomPublisher {
                session: id.clone(),
                bridge: bridge.clone(),
            });
        }
        if v.sessions.len() < LISTED_SESSIONS {
            v.sessions.insert(id.clone(), bridge.clone());
        }
    }
    v
}

/// The media and SSRCs of publisher `session` of room `conference`, for a watch session.
fn publisher_of(
    f: &Focus,
    conference: &str,
    session: &str,
) -> Result<(MediaDescription, Vec<u32>), HttpError> {
    let none = || {
        HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no publisher {} in room {} (it left, or moved: see the room's events)",
                quoted(session),
                quoted(conference)
            ),
        )
    };
    let p = f.conferences().get(conference).ok_or_else(none)?;
    if p.broadcast.is_some() {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            format!("{} is a stream, not a room", quoted(conference)),
        ));
    }
    let x = p.participants.get(session).ok_or_else(none)?;
    match (&x.media, session.starts_with("pub-")) {
        (Some(m), true) => Ok(((**m).clone(), x.ssrcs.clone())),
        _ => Err(none()),
    }
}

/// A publish or watch session's participant: WebRTC, in a conference, placed by region.
fn session_join(conference: &str, session: &str, query: Option<&str>) -> JoinRequest {
    JoinRequest {
        conference: conference.into(),
        participant_id: session.into(),
        region: query_param(query, "region").unwrap_or_default(),
        ssrcs: Vec::new(),
        remote_addr: String::new(),
        srtp: None,
        role: Role::Participant,
        webrtc: None,
        rewrite: None,
        media: None,
        subscription: None,
        last_n: 0,
        owner: String::new(),
    }
}

async fn publish(
    State(c): State<Arc<Control>>,
    Path(conference): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let body = offer_body(&headers, body)?;
    c.check_active().await.map_err(from_status)?;
    let offer = sdp::parse_offer(&body).map_err(bad_offer)?;
    let publish = answer::publish(&offer).map_err(bad_offer)?;
    if publish.media.sections.iter().any(|s| !s.rids.is_empty()) {
        // A room's watch sessions subscribe to a publisher's SSRCs, which simulcast learns
        // only from the packets: not supported in rooms yet (WHIP streams take simulcast).
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "simulcast (a=simulcast) is not supported in rooms yet: publish one encoding",
        ));
    }
    let session = format!("pub-{}", random_chars(SESSION_CHARS));
    let w = webrtc(&offer);
    let join = JoinRequest {
        ssrcs: publish.ssrcs.clone(),
        webrtc: Some(w.clone()),
        media: Some(publish.media.clone()),
        // It sends; what it receives comes over its watch sessions.
        subscription: Some(Vec::new()),
        last_n: 0,
        owner: String::new(),
        ..session_join(&conference, &session, query.as_deref())
    };
    let placed = place(&c, join, |_, _| Ok(())).await?;
    tracing::info!(%conference, %session, bridge = %placed.bridge, "room: publishing");
    let sdp = answer_text(&offer, &publish.sections, &w, &placed);
    Ok(created("room", &conference, &session, sdp))
}

async fn watch(
    State(c): State<Arc<Control>>,
    Path((conference, publisher)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let body = offer_body(&headers, body)?;
    c.check_active().await.map_err(from_status)?;
    let offer = sdp::parse_offer(&body).map_err(bad_offer)?;
    answer::check_play(&offer).map_err(bad_offer)?;
    let last_n = match query_param(query.as_deref(), "last_n") {
        None => 0,
        Some(v) => v.parse::<u32>().map_err(|_| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("last_n: {} is not a number of speakers", quoted(&v)),
            )
        })?,
    };
    let session = format!("sub-{}", random_chars(SESSION_CHARS));
    let w = webrtc(&offer);
    // The page's own publish session: last-N counts the speakers other than it.
    let owner = query_param(query.as_deref(), "owner").unwrap_or_default();
    if !owner.is_empty() && (!owner.starts_with("pub-") || owner.len() > 64) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("owner: {} is not a publish session", quoted(&owner)),
        ));
    }
    let join = JoinRequest {
        webrtc: Some(w.clone()),
        last_n,
        owner,
        ..session_join(&conference, &session, query.as_deref())
    };
    let mut play = None;
    let placed = place(&c, join, |f, j| {
        let (media, ssrcs) = publisher_of(f, &conference, &publisher)?;
        let p = answer::play(&offer, &media).map_err(bad_offer)?;
        j.rewrite = Some(p.rewrite.clone()).filter(|r| !r.is_empty());
        j.subscription = Some(ssrcs);
        play = Some(p);
        Ok(())
    })
    .await?;
    let play = play.expect("negotiated before the join");
    tracing::info!(%conference, %session, %publisher, bridge = %placed.bridge, "room: watching");
    let sdp = answer_text(&offer, &play.sections, &w, &placed);
    Ok(created("room", &conference, &session, sdp))
}

/// 404 unless `session` is a live publish or watch session of room `conference`.
fn find_session(c: &Control, conference: &str, session: &str) -> Result<(), HttpError> {
    let gone = || {
        HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no session {} in room {}: unknown, or ended",
                quoted(session),
                quoted(conference)
            ),
        )
    };
    if !(session.starts_with("pub-") || session.starts_with("sub-")) {
        return Err(gone());
    }
    let core = c.lock();
    let p = core.focus.conferences().get(conference).ok_or_else(gone)?;
    match p.participants.get(session) {
        Some(x) if x.webrtc.is_some() && p.broadcast.is_none() => Ok(()),
        _ => Err(gone()),
    }
}

async fn end(
    State(c): State<Arc<Control>>,
    Path((conference, session)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    c.check_active().await.map_err(from_status)?;
    find_session(&c, &conference, &session)?;
    leave(&c, &conference, &session).await?;
    tracing::info!(%conference, %session, "room: session ended by DELETE");
    Ok(StatusCode::OK.into_response())
}

async fn trickle(
    State(c): State<Arc<Control>>,
    Path((conference, session)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    c.check_active().await.map_err(from_status)?;
    find_session(&c, &conference, &session)?;
    // ICE-lite: the bridge learns the client's address from its checks.
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The room's events: its [`RoomView`] as JSON now and whenever it changes.
async fn events(
    State(c): State<Arc<Control>>,
    Path(conference): Path<String>,
) -> Result<Response, HttpError> {
    c.check_active().await.map_err(from_status)?;
    let slot = c.watch_slot(None).map_err(from_status)?;
    let mut announcements = c.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(8);
    tokio::spawn(async move {
        let _slot = slot;
        let mut last: Option<RoomView> = None;
        let mut rescan = tokio::time::interval(RESCAN);
        loop {
            let v = view(&c.lock().focus, &conference);
            if last.as_ref() != Some(&v) {
                let json = serde_json::to_string(&v).unwrap_or_default();
                if tx.send(Ok(Event::default().data(json))).await.is_err() {
                    return;
                }
                last = Some(v);
            }
            tokio::select! {
                _ = tx.closed() => return, // the page went away
                _ = rescan.tick() => {}
                e = announcements.recv() => match e {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        ROOM_PAGE,
    )
        .into_response()
}

/// The room routes (merged into [`super::http::router`]).
pub fn routes() -> Router<Arc<Control>> {
    Router::new()
        .route("/room/{conference}", get(page))
        .route("/room/{conference}/events", get(events))
        .route(
            "/room/{conference}/publish",
            post(publish).options(preflight),
        )
        .route(
            "/room/{conference}/watch/{publisher}",
            post(watch).options(preflight),
        )
        .route(
            "/room/{conference}/{session}",
            axum::routing::delete(end).patch(trickle).options(preflight),
        )
}
