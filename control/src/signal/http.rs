//! WHIP (RFC 9725) and WHEP over HTTP, and the page (`GET /`), on `serve --http ADDR` (axum).
//!
//! A session is a participant: `POST /whip/{stream}` makes the client the publisher of the
//! broadcast `{stream}` and `POST /whep/{stream}` a viewer of it, through the focus exactly as a
//! gRPC Join with that role (its plans, the executor's deadlines, durable acknowledgements), with
//! the WebRTC parameters of the offer and fresh ICE credentials for the bridge's side. The
//! session id (`whip-...`, `whep-...`) is the participant id, so a session outlives a restart of
//! the control plane and a takeover by a standby: `DELETE` finds it in the placements. Nothing
//! here decides where anyone goes: the focus does. See `docs/webrtc.md` for the API as a client
//! meets it (codes, CORS, what happens to a session on failover).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tonic::Code;

use super::answer::{self, Local, Section};
use super::sdp::{self, MAX_SDP_BYTES, Offer, SdpError};
use crate::core::focus::{CallError, Done, Focus, FocusError, JoinRequest};
use crate::run::service::Control;
use crate::store::{MediaDescription, Role, WebRtc};

/// The page `GET /` serves: publish and play with WHIP and WHEP, live `getStats()` figures.
pub const PAGE: &str = include_str!("page.html");

/// Characters of a session id after its `whip-`/`whep-` prefix.
pub(super) const SESSION_CHARS: usize = 16;
/// Characters of the bridge's ICE ufrag and password for a session (RFC 8839: at least 4 and
/// 22; 8 alphanumerics are 47 bits, 24 are 142).
const UFRAG_CHARS: usize = 8;
const PWD_CHARS: usize = 24;

/// What a path segment keeps unescaped in a `Location` (RFC 3986 unreserved characters).
pub(super) const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// WHIP (publishers) or WHEP (viewers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Whip,
    Whep,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Self::Whip => "whip",
            Self::Whep => "whep",
        }
    }

    fn role(self) -> Role {
        match self {
            Self::Whip => Role::Publisher,
            Self::Whep => Role::Viewer,
        }
    }
}

/// A refused request: its status and what is wrong (the body, as text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct HttpError {
    /// The status.
    pub status: StatusCode,
    /// What is wrong.
    pub message: String,
}

impl HttpError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.message),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// A bad offer: 400 naming what is wrong.
pub(super) fn bad_offer(e: SdpError) -> HttpError {
    HttpError::new(StatusCode::BAD_REQUEST, format!("offer: {e}"))
}

/// The HTTP form of a focus refusal or failure.
pub(super) fn from_focus(e: FocusError) -> HttpError {
    let msg = e.to_string().replacen("conference:", "stream:", 1);
    let status = match &e {
        // A stream name taken by a conference, or joined the other way.
        FocusError::Invalid { field: "role", .. } => StatusCode::CONFLICT,
        FocusError::Invalid { .. } => StatusCode::BAD_REQUEST,
        FocusError::Exists(_) => StatusCode::CONFLICT,
        FocusError::NotFound(_) => StatusCode::NOT_FOUND,
        FocusError::Busy(_) | FocusError::NoBridge(_) | FocusError::BridgeUnavailable { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        FocusError::Bridge { error, .. } => match error {
            CallError::Invalid(_) | CallError::NotFound(_) | CallError::Exists(_) => {
                StatusCode::BAD_GATEWAY
            }
            CallError::Full(_) | CallError::Unavailable(_) | CallError::Timeout { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        },
    };
    HttpError::new(status, msg)
}

/// The HTTP form of a gRPC-style status from the control's glue (standby, store, busy).
pub(super) fn from_status(s: tonic::Status) -> HttpError {
    let status = match s.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::AlreadyExists | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    HttpError::new(status, s.message())
}

/// `n` random alphanumerics (system randomness, unbiased).
pub(super) fn random_chars(n: usize) -> String {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        aws_lc_rs::rand::fill(&mut buf).expect("system randomness");
        // 248 = 4 * 62: bytes above it would favour the first letters.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == n {
                break;
            }
            out.push(ALPHABET[usize::from(*b % 62)] as char);
        }
    }
    out
}

/// A random `o=` session id (positive in 63 bits, as SDP producers write them).
fn random_session_id() -> u64 {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).expect("system randomness");
    u64::from_be_bytes(b) >> 2
}

/// The value of `key` in a query string, percent-decoded (`+` is a space).
pub(super) fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| {
            percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The offer in a request: `Content-Type: application/sdp` (else 415), at most
/// [`MAX_SDP_BYTES`] (else 413, before it is read past the limit).
pub(super) fn offer_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, HttpError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/sdp") {
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type must be application/sdp (an SDP offer), not {:?}",
                mime.chars().take(64).collect::<String>()
            ),
        ));
    }
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the offer is over the limit of {MAX_SDP_BYTES} bytes"),
            )
        } else {
            HttpError::new(StatusCode::BAD_REQUEST, format!("reading the offer: {e}"))
        }
    })
}

/// Where a joined session's participant went.
pub(super) struct Placed {
    pub(super) bridge: String,
    pub(super) media_addr: SocketAddr,
    pub(super) fingerprint: String,
}

/// Joins `join` through the focus as a gRPC Join does (waiting, bounded, while the stream has an
/// operation in flight), acknowledged once durable. `prepare` runs under the focus's lock just
/// before the join is planned (a viewer's rewrite is made against the publisher it sees there).
pub(super) async fn place(
    c: &Arc<Control>,
    join: JoinRequest,
    mut prepare: impl FnMut(&Focus, &mut JoinRequest) -> Result<(), HttpError> + Send,
) -> Result<Placed, HttpError> {
    c.check_store().map_err(from_status)?;
    let conference = join.conference.clone();
    let participant = join.participant_id.clone();
    let mut refused: Option<HttpError> = None;
    let plan = c
        .submit(&conference, |f, now| {
            let mut j = join.clone();
            if let Err(e) = prepare(f, &mut j) {
                refused = Some(e);
                return Err(FocusError::NotFound(String::new()));
            }
            f.join(j, now).inspect_err(|e| {
                if !matches!(e, FocusError::Busy(_)) {
                    refused = Some(from_focus(e.clone()));
                }
            })
        })
        .await;
    let plan = match plan {
        Ok(p) => p,
        Err(s) => return Err(refused.unwrap_or_else(|| from_status(s))),
    };
    let done = c.run(plan).await.result.map_err(from_focus)?;
    let Done::Joined {
        bridge, media_addr, ..
    } = done
    else {
        return Err(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("join completed as {done:?}"),
        ));
    };
    let fingerprint = c
        .lock()
        .focus
        .fleet()
        .get(&bridge)
        .map(|b| b.dtls_fingerprint.clone())
        .unwrap_or_default();
    let addr = media_addr.parse::<SocketAddr>();
    let failed = match (&addr, fingerprint.is_empty()) {
        (Err(_), _) => Some(format!(
            "bridge {bridge} advertises media address {media_addr:?}, not ip:port"
        )),
        (_, true) => Some(format!("bridge {bridge} no longer has a DTLS fingerprint")),
        _ => c.durable().await.err().map(|s| s.message().to_string()),
    };
    if let Some(why) = failed {
        // The client never learns this session: take it out again (best effort).
        abandon(c, conference, participant);
        return Err(HttpError::new(StatusCode::SERVICE_UNAVAILABLE, why));
    }
    c.placements_total.fetch_add(1, Relaxed);
    Ok(Placed {
        bridge,
        media_addr: addr.expect("checked"),
        fingerprint,
    })
}

/// Makes a participant whose client got no answer leave, in the background.
fn abandon(c: &Arc<Control>, conference: String, participant: String) {
    let c = c.clone();
    tokio::spawn(async move {
        if let Ok(plan) = c
            .submit(&conference, |f, _| f.leave(&conference, &participant))
            .await
        {
            let _ = c.run(plan).await;
        }
    });
}

/// `s` quoted for an error message, cut to 64 characters.
pub(super) fn quoted(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{:?}...", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// The media a viewer of `stream` is answered from: its WebRTC publisher's.
fn publisher_media(f: &Focus, stream: &str) -> Result<(String, MediaDescription), HttpError> {
    let none = || {
        HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "stream {} has no publisher yet: publish it with WHIP first",
                quoted(stream)
            ),
        )
    };
    let p = f.conferences().get(stream).ok_or_else(none)?;
    let b = p.broadcast.as_ref().ok_or_else(|| {
        HttpError::new(
            StatusCode::CONFLICT,
            format!("{} is a conference, not a stream", quoted(stream)),
        )
    })?;
    let publisher = b.publisher.as_ref().ok_or_else(none)?;
    let x = p.participants.get(publisher).ok_or_else(none)?;
    let media = x.media.as_deref().cloned().ok_or_else(|| {
        HttpError::new(
            StatusCode::CONFLICT,
            format!(
                "the publisher of {} is not a WebRTC publisher: there are no codecs to answer with",
                quoted(stream)
            ),
        )
    })?;
    Ok((publisher.clone(), media))
}

/// The bridge's ICE credentials for a new session, and the participant's from its offer.
pub(super) fn webrtc(offer: &Offer) -> WebRtc {
    WebRtc {
        local_ufrag: random_chars(UFRAG_CHARS),
        local_pwd: random_chars(PWD_CHARS),
        remote_ufrag: offer.ice_ufrag.clone(),
        remote_fingerprint: offer.fingerprint.clone(),
    }
}

/// `201 Created` with the answer and the session's `Location`.
/// `201 Created` with the answer, the session's `Location` (`/{prefix}/{name}/{session}`) and
/// its `ETag`.
pub(super) fn created(prefix: &str, name: &str, session: &str, sdp: String) -> Response {
    let location = format!("/{prefix}/{}/{session}", utf8_percent_encode(name, SEGMENT));
    let mut r = (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/sdp")],
        sdp,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{session}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

/// The answer's text for a session placed as `placed`, with `w`'s credentials.
pub(super) fn answer_text(
    offer: &Offer,
    sections: &[Section],
    w: &WebRtc,
    placed: &Placed,
) -> String {
    answer::write(
        offer,
        sections,
        &Local {
            ufrag: w.local_ufrag.clone(),
            pwd: w.local_pwd.clone(),
            fingerprint: placed.fingerprint.clone(),
            media_addr: placed.media_addr,
            session_id: random_session_id(),
        },
    )
}

async fn whip(
    State(c): State<Arc<Control>>,
    Path(stream): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let body = offer_body(&headers, body)?;
    c.check_active().await.map_err(from_status)?;
    let offer = sdp::parse_offer(&body).map_err(bad_offer)?;
    let publish = answer::publish(&offer).map_err(bad_offer)?;
    let session = format!("whip-{}", random_chars(SESSION_CHARS));
    let w = webrtc(&offer);
    let join = JoinRequest {
        conference: stream.clone(),
        participant_id: session.clone(),
        region: query_param(query.as_deref(), "region").unwrap_or_default(),
        ssrcs: publish.ssrcs.clone(),
        remote_addr: String::new(),
        srtp: None,
        role: Role::Publisher,
        webrtc: Some(w.clone()),
        rewrite: None,
        media: Some(publish.media.clone()),
        subscription: None,
        last_n: 0,
        owner: String::new(),
    };
    let placed = place(&c, join, |_, _| Ok(())).await?;
    tracing::info!(%stream, %session, bridge = %placed.bridge, "WHIP session: publishing");
    let sdp = answer_text(&offer, &publish.sections, &w, &placed);
    Ok(created(Kind::Whip.path(), &stream, &session, sdp))
}

async fn whep(
    State(c): State<Arc<Control>>,
    Path(stream): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let body = offer_body(&headers, body)?;
    c.check_active().await.map_err(from_status)?;
    let offer = sdp::parse_offer(&body).map_err(bad_offer)?;
    answer::check_play(&offer).map_err(bad_offer)?;
    let max_height = max_height(query.as_deref())?;
    let session = format!("whep-{}", random_chars(SESSION_CHARS));
    let w = webrtc(&offer);
    let join = JoinRequest {
        conference: stream.clone(),
        participant_id: session.clone(),
        region: query_param(query.as_deref(), "region").unwrap_or_default(),
        ssrcs: Vec::new(),
        remote_addr: String::new(),
        srtp: None,
        role: Role::Viewer,
        webrtc: Some(w.clone()),
        rewrite: None,
        media: None,
        subscription: None,
        last_n: 0,
        owner: String::new(),
    };
    let mut play = None;
    let placed = place(&c, join, |f, j| {
        let (publisher, media) = publisher_media(f, &stream)?;
        let mut p = answer::play(&offer, &media).map_err(bad_offer)?;
        if let Some(v) = p.rewrite.simulcast.as_mut() {
            v.publisher = publisher;
            v.max_height = max_height.unwrap_or(0);
        }
        j.rewrite = Some(p.rewrite.clone()).filter(|r| !r.is_empty());
        play = Some(p);
        Ok(())
    })
    .await?;
    let play = play.expect("negotiated before the join");
    tracing::info!(%stream, %session, bridge = %placed.bridge, "WHEP session: playing");
    let sdp = answer_text(&offer, &play.sections, &w, &placed);
    Ok(created(Kind::Whep.path(), &stream, &session, sdp))
}

/// 404 unless `session` is a live WebRTC session of `kind` on `stream`.
fn find_session(c: &Control, kind: Kind, stream: &str, session: &str) -> Result<(), HttpError> {
    let gone = || {
        HttpError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no session {} on stream {}: unknown, or ended (deleted, or moved to another bridge: POST again)",
                quoted(session),
                quoted(stream)
            ),
        )
    };
    if !session.starts_with(&format!("{}-", kind.path())) {
        return Err(gone());
    }
    let core = c.lock();
    let x = core
        .focus
        .conferences()
        .get(stream)
        .and_then(|p| p.participants.get(session))
        .ok_or_else(gone)?;
    if x.webrtc.is_none() || x.role != kind.role() {
        return Err(gone());
    }
    Ok(())
}

async fn end(
    c: Arc<Control>,
    kind: Kind,
    stream: String,
    session: String,
) -> Result<Response, HttpError> {
    c.check_active().await.map_err(from_status)?;
    find_session(&c, kind, &stream, &session)?;
    leave(&c, &stream, &session).await?;
    tracing::info!(%stream, %session, "{} session ended by DELETE", kind.path());
    Ok(StatusCode::OK.into_response())
}

/// Makes session `session` of `conference` leave through the focus, acknowledged once durable.
pub(super) async fn leave(
    c: &Arc<Control>,
    conference: &str,
    session: &str,
) -> Result<(), HttpError> {
    c.check_store().map_err(from_status)?;
    let plan = c
        .submit(conference, |f, _| f.leave(conference, session))
        .await
        .map_err(from_status)?;
    c.run(plan).await.result.map_err(from_focus)?;
    c.durable().await.map_err(from_status)?;
    Ok(())
}

async fn trickle(
    c: Arc<Control>,
    kind: Kind,
    stream: String,
    session: String,
) -> Result<Response, HttpError> {
    c.check_active().await.map_err(from_status)?;
    find_session(&c, kind, &stream, &session)?;
    // The bridge is ICE-lite: it learns the client's address from the client's checks, so
    // trickled candidates are not needed (RFC 9725 lets a server ignore them).
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn end_whip(
    State(c): State<Arc<Control>>,
    Path((stream, session)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    end(c, Kind::Whip, stream, session).await
}

async fn end_whep(
    State(c): State<Arc<Control>>,
    Path((stream, session)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    end(c, Kind::Whep, stream, session).await
}

async fn patch_whip(
    State(c): State<Arc<Control>>,
    Path((stream, session)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    trickle(c, Kind::Whip, stream, session).await
}

/// PATCH of a WHEP session: with `?max_height=N`, the largest frame height the viewer now
/// wants of a simulcast publisher (0: none; it moves layer at the next keyframe); otherwise a
/// trickle (ignored: ICE-lite).
async fn patch_whep(
    State(c): State<Arc<Control>>,
    Path((stream, session)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let Some(h) = max_height(query.as_deref())? else {
        return trickle(c, Kind::Whep, stream, session).await;
    };
    c.check_active().await.map_err(from_status)?;
    find_session(&c, Kind::Whep, &stream, &session)?;
    let plan = c
        .submit(&stream, |f, _| f.set_max_height(&stream, &session, h))
        .await
        .map_err(from_status)?;
    c.run(plan).await.result.map_err(from_focus)?;
    tracing::info!(%stream, %session, max_height = h, "WHEP session: simulcast limit");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The `max_height` query parameter (frame height in pixels, 0-8192), if given.
fn max_height(query: Option<&str>) -> Result<Option<u32>, HttpError> {
    let Some(v) = query_param(query, "max_height") else {
        return Ok(None);
    };
    v.parse::<u32>()
        .ok()
        .filter(|h| *h <= 8192)
        .map(Some)
        .ok_or_else(|| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("max_height: {} is not a frame height (0-8192)", quoted(&v)),
            )
        })
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

/// Preflights are answered on any path; other unknown paths are 404.
async fn fallback(method: Method) -> Response {
    if method == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        HttpError::new(
            StatusCode::NOT_FOUND,
            "not found: see GET / and docs/webrtc.md",
        )
        .into_response()
    }
}

pub(super) async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// CORS on every response, so a page on another origin can publish and play.
async fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "POST, DELETE, PATCH, OPTIONS",
        ),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "Content-Type, Authorization, If-Match",
        ),
        (header::ACCESS_CONTROL_EXPOSE_HEADERS, "Location, ETag"),
        (header::ACCESS_CONTROL_MAX_AGE, "86400"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// The routes, over `control`.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/whip/{stream}", post(whip).options(preflight))
        .route("/whep/{stream}", post(whep).options(preflight))
        .route(
            "/whip/{stream}/{session}",
            axum::routing::delete(end_whip)
                .patch(patch_whip)
                .options(preflight),
        )
        .route(
            "/whep/{stream}/{session}",
            axum::routing::delete(end_whep)
                .patch(patch_whep)
                .options(preflight),
        )
        .merge(super::room::routes())
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(MAX_SDP_BYTES))
        .layer(axum::middleware::map_response(cors))
        .with_state(control)
}

/// Serves the routes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(control))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_credentials_are_random_alphanumerics_of_the_right_length() {
        let a = random_chars(PWD_CHARS);
        let b = random_chars(PWD_CHARS);
        assert_eq!(a.len(), PWD_CHARS);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(random_chars(UFRAG_CHARS).len(), UFRAG_CHARS);
    }

    #[test]
    fn the_region_comes_from_the_query_decoded() {
        assert_eq!(
            query_param(Some("region=eu"), "region").as_deref(),
            Some("eu")
        );
        assert_eq!(
            query_param(Some("a=1&region=us%2Deast+1"), "region").as_deref(),
            Some("us-east 1")
        );
        assert_eq!(query_param(Some("regions=eu"), "region"), None);
        assert_eq!(query_param(None, "region"), None);
    }

    #[test]
    fn focus_refusals_map_to_http_codes() {
        let code = |e| from_focus(e).status;
        assert_eq!(
            code(FocusError::Exists("role: already has publisher".into())),
            StatusCode::CONFLICT
        );
        assert_eq!(
            code(FocusError::Invalid {
                field: "role",
                why: "a conference".into()
            }),
            StatusCode::CONFLICT
        );
        assert_eq!(
            code(FocusError::Invalid {
                field: "conference",
                why: "too long".into()
            }),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            code(FocusError::NoBridge(
                crate::core::fleet::NoBridge::NoneRegistered
            )),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            code(FocusError::Bridge {
                bridge: "b".into(),
                error: CallError::Invalid("webrtc: no".into())
            }),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            from_status(tonic::Status::unavailable("standby")).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
