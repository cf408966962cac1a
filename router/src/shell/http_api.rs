//! The control API: HTTP/1 on a unix socket (`--api-socket`, default
//! `/run/weft/weft.sock`; who may connect is the socket's mode and group,
//! see [`crate::shell::api_socket`]).
//!
//! The mesh endpoints are answered by the router task: the handler sends an
//! [`ApiRequest`] with a oneshot reply over the router's event queue, so the
//! API never touches router state directly. The attachment endpoints work
//! on the host's network, not the router, and are answered directly by the
//! daemon's [`Attachments`]. Bodies are JSON; errors are always
//! `{"error": "..."}`.
//!
//! A request that could change something (any method but GET and HEAD)
//! must say `Content-Type: application/json` (else 415), and the control
//! surface refuses any request with an `Origin` header (403): only a
//! browser sends one, and a web page has no business here. This keeps the
//! classic cross-site tricks (a form or `fetch` posting `text/plain` to a
//! local port) out even where the API is reachable by a browser.
//!
//! | Method and path | Body | Answer |
//! |---|---|---|
//! | `GET /status` | | [`RouterStatus`] |
//! | `POST /connect` | [`PeersRequest`] | [`ConnectResponse`] |
//! | `POST /forget` | [`PeersRequest`] | [`ForgetResponse`] |
//! | `POST /stop` | | [`StopResponse`], then the router shuts down |
//! | `POST /attach` | [`AttachRequest`] | [`AttachmentInfo`] |
//! | `POST /detach` | [`DetachRequest`] | [`DetachResponse`] |
//! | `GET /ps` | | [`PsResponse`] |
//! | `POST /expose` | [`CidrsRequest`] | [`ExposeResponse`] |
//! | `POST /hide` | [`CidrsRequest`] | [`HideResponse`] |
//!
//! The same server code also runs the read-only status listener
//! (`--status-addr`, [`Surface::Status`]); see [`crate::shell::status_page`].
//! `docs/api.md` documents both.

use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, ORIGIN};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::core::prefix::IpNet;
use crate::core::status::RouterStatus;
use crate::core::wire::addr::PeerAddr;
use crate::shell::api_socket::ApiListener;
use crate::shell::attach::{
    AttachError, AttachmentInfo, Attachments, DEFAULT_IFNAME, Netns, parse_cidrs,
};
use crate::shell::daemon::Event;
use crate::shell::expose::{ExposeError, Exposed};
use crate::shell::status_page;

/// Largest request body accepted; a peer list is a few hundred bytes.
const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// A client that has not sent its request headers by then is dropped, so
/// idle sockets cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Time in-flight requests get to finish once the server stops.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Body of `POST /connect` and `POST /forget`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersRequest {
    /// `HOST`, `HOST:PORT` or `[IPV6]:PORT`, as on the command line.
    pub peers: Vec<String>,
    /// `POST /connect` only: forget every user target not in `peers`.
    #[serde(default)]
    pub replace: bool,
}

/// Answer to `POST /connect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectResponse {
    /// The targets now kept connected, normalised to `HOST:PORT`.
    pub added: Vec<String>,
    /// With `replace`: the user targets that were forgotten.
    #[serde(default)]
    pub forgotten: Vec<String>,
}

/// Answer to `POST /forget`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetResponse {
    /// Targets that were forgotten.
    pub forgotten: Vec<String>,
    /// Addresses given that were not targets.
    pub not_targets: Vec<String>,
}

/// Answer to `POST /stop`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopResponse {
    pub stopping: bool,
}

/// Body of `POST /attach`: exactly one of `netns`, `pid` and
/// `netns_path`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// A namespace made with `ip netns add`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The namespace of this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// A namespace file, such as `/proc/PID/ns/net` or a runtime's
    /// `/var/run/netns/cni-…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_path: Option<PathBuf>,
    /// The container's id; default derived from the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Interface name inside the namespace; default `ethwe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// Addresses for the interface, like `10.32.0.1/12`.
    #[serde(default)]
    pub cidrs: Vec<String>,
}

/// Body of `POST /detach`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
}

/// Answer to `POST /detach`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachResponse {
    #[serde(flatten)]
    pub netns: Netns,
    pub ifname: String,
    /// The veth end that was deleted.
    pub host_ifname: String,
}

/// Answer to `GET /ps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsResponse {
    pub attachments: Vec<AttachmentInfo>,
}

/// Body of `POST /expose` and `POST /hide`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CidrsRequest {
    /// Addresses of the host on the bridge, like `10.32.0.254/12`; empty
    /// means "the ones exposed before" (expose) or "all" (hide).
    #[serde(default)]
    pub cidrs: Vec<String>,
}

/// Answer to `POST /expose`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposeResponse {
    /// Every address the host now has on the bridge through weft.
    pub exposed: Vec<String>,
}

/// Answer to `POST /hide`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HideResponse {
    /// The addresses removed.
    pub hidden: Vec<String>,
}

/// Every error the API returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}

/// A request for the router task, with where to send the answer.
#[derive(Debug)]
pub enum ApiRequest {
    Status(oneshot::Sender<RouterStatus>),
    /// Add targets; with `replace`, forget the other user targets and
    /// answer which.
    Connect {
        targets: Vec<PeerAddr>,
        replace: bool,
        reply: oneshot::Sender<Vec<PeerAddr>>,
    },
    Forget(Vec<PeerAddr>, oneshot::Sender<Vec<PeerAddr>>),
    Stop(oneshot::Sender<()>),
    /// Replace the mesh passwords for handshakes from now on (rotation);
    /// the answer is an error in words if this router has no password.
    Password(
        Box<crate::core::crypto::PskSet>,
        oneshot::Sender<Result<(), String>>,
    ),
}

/// Body of `POST /password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordRequest {
    /// The password to dial peers with (and accept).
    pub password: String,
    /// A second password to accept from peers during a rotation.
    #[serde(default)]
    pub also_accept: Option<String>,
}

/// Answer of `POST /password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordResponse {
    pub accepted: usize,
}

/// The router task has stopped (or is stopping) and answers nothing more.
#[derive(Debug)]
pub(crate) struct RouterGone;

/// How handlers reach the router task and the host's network.
#[derive(Clone, Debug)]
pub(crate) struct ApiHandle {
    events: mpsc::Sender<Event>,
    /// `None` when the router runs without a bridge.
    host: Option<HostHandles>,
}

/// The bridge-side state the API changes directly.
#[derive(Clone, Debug)]
pub(crate) struct HostHandles {
    pub(crate) attachments: Arc<Attachments>,
    pub(crate) exposed: Arc<Exposed>,
}

/// Which server a listener runs: the control API the CLI uses, or the
/// read-only status listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Surface {
    Control,
    Status,
}

impl ApiHandle {
    pub(crate) fn new(events: mpsc::Sender<Event>, host: Option<HostHandles>) -> Self {
        Self { events, host }
    }

    /// The router's status, as the router task reports it.
    pub(crate) async fn status(&self) -> Result<RouterStatus, RouterGone> {
        self.call(ApiRequest::Status).await
    }

    async fn call<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
    ) -> Result<T, RouterGone> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(Event::Api(request(tx)))
            .await
            .map_err(|_| RouterGone)?;
        rx.await.map_err(|_| RouterGone)
    }
}

/// A listener the API can be served on: the control socket, or TCP for
/// the status listener.
pub(crate) trait Accept: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        UnixListener::accept(self).await.map(|(stream, _)| stream)
    }
}

impl Accept for ApiListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        ApiListener::accept(self).await
    }
}

/// Serves the API until `stop` is cancelled, then gives in-flight requests
/// a moment to finish. The listener is dropped before the wait (for the
/// control socket: its file is removed).
pub(crate) async fn serve<L: Accept>(
    listener: L,
    api: ApiHandle,
    surface: Surface,
    stop: CancellationToken,
) {
    let conns = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                warn!(error = %e, "HTTP API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let api = api.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let service = service_fn(move |req| {
                let api = api.clone();
                async move {
                    let response = match refusal(surface, &req) {
                        Some(refused) => refused,
                        None => match surface {
                            Surface::Control => handle(&api, req).await,
                            Surface::Status => status_page::handle(&api, req).await,
                        },
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "HTTP API connection ended with an error");
            }
        });
    }
    drop(listener);
    conns.close();
    let _ = tokio::time::timeout(DRAIN_GRACE, conns.wait()).await;
}

/// The rules every request meets before it reaches an endpoint: no
/// `Origin` on the control surface, and a JSON content type on anything
/// that is not a read. Returns the refusal, if any.
fn refusal<B>(surface: Surface, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    if surface == Surface::Control && req.headers().contains_key(ORIGIN) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "requests with an Origin header (from a web page) are refused by the weft control API; use the weft CLI or a client that sends no Origin".into(),
        ));
    }
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return None;
    }
    let json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    (!json).then(|| {
        error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "{} {} needs the header Content-Type: application/json",
                req.method(),
                req.uri().path()
            ),
        )
    })
}

async fn handle(api: &ApiHandle, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = match (&method, path.as_str()) {
        (&Method::GET, "/status") => api
            .call(ApiRequest::Status)
            .await
            .map(|status| json(StatusCode::OK, &status)),
        (&Method::POST, "/password") => {
            let body: PasswordRequest =
                match read_json(req, r#"{"password": "new", "also_accept": "old"}"#).await {
                    Ok(b) => b,
                    Err(response) => return response,
                };
            if body.password.is_empty() || body.also_accept.as_deref() == Some("") {
                return error(
                    StatusCode::BAD_REQUEST,
                    "an empty password protects nothing; give the mesh password".into(),
                );
            }
            let accepted = 1 + usize::from(body.also_accept.is_some());
            // Argon2 takes tens of milliseconds and 64 MiB: off the runtime.
            let derived = tokio::task::spawn_blocking(move || {
                crate::shell::crypto::psk_set(&body.password, body.also_accept.as_deref())
            })
            .await;
            let psks = match derived {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
                Err(e) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("password derivation failed: {e}"),
                    );
                }
            };
            match api
                .call(|tx| ApiRequest::Password(Box::new(psks), tx))
                .await
            {
                Ok(Ok(())) => Ok(json(StatusCode::OK, &PasswordResponse { accepted })),
                Ok(Err(why)) => Ok(error(StatusCode::CONFLICT, why)),
                Err(gone) => Err(gone),
            }
        }
        (&Method::POST, "/connect") => match read_peers(req).await {
            Ok((peers, replace)) => api
                .call(|reply| ApiRequest::Connect {
                    targets: peers.clone(),
                    replace,
                    reply,
                })
                .await
                .map(|forgotten| {
                    let added = peers.iter().map(ToString::to_string).collect();
                    let forgotten = forgotten.iter().map(ToString::to_string).collect();
                    json(StatusCode::OK, &ConnectResponse { added, forgotten })
                }),
            Err(response) => Ok(response),
        },
        (&Method::POST, "/forget") => match read_peers(req).await {
            Ok((peers, _)) => api
                .call(|tx| ApiRequest::Forget(peers.clone(), tx))
                .await
                .map(|forgotten| {
                    let not_targets = peers
                        .iter()
                        .filter(|p| !forgotten.contains(p))
                        .map(ToString::to_string)
                        .collect();
                    let forgotten = forgotten.iter().map(ToString::to_string).collect();
                    json(
                        StatusCode::OK,
                        &ForgetResponse {
                            forgotten,
                            not_targets,
                        },
                    )
                }),
            Err(response) => Ok(response),
        },
        (&Method::POST, "/stop") => api
            .call(ApiRequest::Stop)
            .await
            .map(|()| json(StatusCode::OK, &StopResponse { stopping: true })),
        (&Method::POST, "/attach") => Ok(host_call(api, req, handle_attach).await),
        (&Method::POST, "/detach") => Ok(host_call(api, req, handle_detach).await),
        (&Method::GET, "/ps") => Ok(host_call(api, req, handle_ps).await),
        (&Method::POST, "/expose") => Ok(host_call(api, req, handle_expose).await),
        (&Method::POST, "/hide") => Ok(host_call(api, req, handle_hide).await),
        (_, "/status" | "/ps") => Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path} is not supported; use GET"),
        )),
        (
            _,
            "/connect" | "/forget" | "/stop" | "/attach" | "/detach" | "/expose" | "/hide"
            | "/password",
        ) => Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path} is not supported; use POST"),
        )),
        _ => Ok(error(
            StatusCode::NOT_FOUND,
            format!(
                "no such endpoint: {method} {path}; the API serves GET /status, POST /connect, POST /forget, POST /stop, POST /attach, POST /detach, GET /ps, POST /expose, POST /hide and POST /password"
            ),
        )),
    };
    result.unwrap_or_else(|RouterGone| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the weft router is shutting down".into(),
        )
    })
}

/// Runs an endpoint that works on the bridge, if this router has one.
async fn host_call<F, Fut>(api: &ApiHandle, req: Request<Incoming>, f: F) -> Response<Full<Bytes>>
where
    F: FnOnce(HostHandles, Request<Incoming>) -> Fut,
    Fut: Future<Output = Response<Full<Bytes>>>,
{
    match &api.host {
        Some(host) => f(host.clone(), req).await,
        None => error(
            StatusCode::CONFLICT,
            "this weft router runs without a bridge (launched with --no-bridge), so nothing can attach to it".into(),
        ),
    }
}

async fn handle_attach(host: HostHandles, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let example = r#"{"netns": "c1", "cidrs": ["10.32.0.1/12"]}"#;
    let request: AttachRequest = match read_json(req, example).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let attached = async {
        let netns = Netns::from_parts(request.netns, request.pid, request.netns_path)?;
        let ifname = request.ifname.unwrap_or_else(|| DEFAULT_IFNAME.into());
        let cidrs = parse_cidrs(&request.cidrs)?;
        host.attachments
            .attach(&netns, request.id.as_deref(), &ifname, &cidrs)
            .await
    };
    match attached.await {
        Ok(info) => json(StatusCode::OK, &info),
        Err(e) => attach_error(&e),
    }
}

async fn handle_detach(host: HostHandles, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let request: DetachRequest = match read_json(req, r#"{"netns": "c1"}"#).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let detached = async {
        let netns = Netns::from_parts(request.netns, request.pid, request.netns_path)?;
        let ifname = request.ifname.unwrap_or_else(|| DEFAULT_IFNAME.into());
        host.attachments.detach(&netns, &ifname).await
    };
    match detached.await {
        Ok(record) => json(
            StatusCode::OK,
            &DetachResponse {
                netns: record.netns,
                ifname: record.ifname,
                host_ifname: record.host_ifname,
            },
        ),
        Err(e) => attach_error(&e),
    }
}

async fn handle_ps(host: HostHandles, _req: Request<Incoming>) -> Response<Full<Bytes>> {
    match host.attachments.list().await {
        Ok(attachments) => json(StatusCode::OK, &PsResponse { attachments }),
        Err(e) => attach_error(&e),
    }
}

async fn handle_expose(host: HostHandles, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let cidrs = match read_cidrs(req).await {
        Ok(cidrs) => cidrs,
        Err(response) => return response,
    };
    match host.exposed.expose(&cidrs).await {
        Ok(exposed) => json(
            StatusCode::OK,
            &ExposeResponse {
                exposed: exposed.iter().map(ToString::to_string).collect(),
            },
        ),
        Err(e) => expose_error(&e),
    }
}

async fn handle_hide(host: HostHandles, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let cidrs = match read_cidrs(req).await {
        Ok(cidrs) => cidrs,
        Err(response) => return response,
    };
    match host.exposed.hide(&cidrs).await {
        Ok(hidden) => json(
            StatusCode::OK,
            &HideResponse {
                hidden: hidden.iter().map(ToString::to_string).collect(),
            },
        ),
        Err(e) => expose_error(&e),
    }
}

/// Reads and parses a [`CidrsRequest`]; an empty body means no addresses.
async fn read_cidrs(req: Request<Incoming>) -> Result<Vec<IpNet>, Response<Full<Bytes>>> {
    let request: CidrsRequest = read_json(req, r#"{"cidrs": ["10.32.0.254/12"]}"#).await?;
    parse_cidrs(&request.cidrs).map_err(|e| attach_error(&e))
}

fn expose_error(e: &ExposeError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, e.to_string())
}

fn attach_error(e: &AttachError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, e.to_string())
}

/// Reads a JSON body of type `T`; `example` shows the shape in the error.
async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    example: &str,
) -> Result<T, Response<Full<Bytes>>> {
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            ));
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body ({e}); expected JSON like {example}"),
        )
    })
}

/// Reads and validates a [`PeersRequest`]; all addresses must parse, or
/// nothing is applied. Returns the addresses and the `replace` flag.
async fn read_peers(
    req: Request<Incoming>,
) -> Result<(Vec<PeerAddr>, bool), Response<Full<Bytes>>> {
    let request: PeersRequest = read_json(req, r#"{"peers": ["192.0.2.7:6783"]}"#).await?;
    if request.peers.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "no peers given; list at least one HOST[:PORT] in \"peers\"".into(),
        ));
    }
    let peers = request
        .peers
        .iter()
        .map(|p| PeerAddr::from_str(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok((peers, request.replace))
}

pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the answer: {e}"),
        ),
    }
}

pub(crate) fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    // An ErrorResponse always serialises; build it by hand so this cannot
    // recurse into `json`'s error path.
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixStream;

    /// A server on a socket in a temporary directory, with a stand-in for
    /// the router task that answers status and counts stop requests.
    struct Server {
        _dir: tempfile::TempDir,
        socket: std::path::PathBuf,
        stops: Arc<std::sync::atomic::AtomicUsize>,
        stop: CancellationToken,
    }

    async fn server(surface: Surface) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (events, mut rx) = mpsc::channel(8);
        let stops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = stops.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if let Event::Api(ApiRequest::Stop(reply)) = event {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = reply.send(());
                }
            }
        });
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            ApiHandle::new(events, None),
            surface,
            stop.clone(),
        ));
        Server {
            _dir: dir,
            socket,
            stops,
            stop,
        }
    }

    /// Sends `head` (request line and headers, without the blank line)
    /// and `body`; returns the status code and the whole response.
    async fn send(server: &Server, head: &str, body: &str) -> (u16, String) {
        let mut stream = UnixStream::connect(&server.socket).await.unwrap();
        let request = format!(
            "{head}\r\nHost: weft\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, response)
    }

    fn stops(server: &Server) -> usize {
        server.stops.load(std::sync::atomic::Ordering::SeqCst)
    }

    const STATE_CHANGING: [&str; 8] = [
        "/stop",
        "/connect",
        "/forget",
        "/attach",
        "/detach",
        "/expose",
        "/hide",
        "/password",
    ];

    #[tokio::test]
    async fn a_post_that_is_not_json_is_refused_with_415() {
        let s = server(Surface::Control).await;
        for path in STATE_CHANGING {
            // What an HTML form or a "simple" cross-site fetch can send.
            for content_type in [
                "Content-Type: text/plain",
                "Content-Type: application/x-www-form-urlencoded",
            ] {
                let (code, text) =
                    send(&s, &format!("POST {path} HTTP/1.1\r\n{content_type}"), "{}").await;
                assert_eq!(code, 415, "{path}: {text}");
                assert!(text.contains("Content-Type: application/json"), "{text}");
            }
            let (code, text) = send(&s, &format!("POST {path} HTTP/1.1"), "{}").await;
            assert_eq!(code, 415, "{path} without a content type: {text}");
        }
        assert_eq!(stops(&s), 0, "nothing reached the router");
        let (code, text) = send(
            &s,
            "POST /stop HTTP/1.1\r\nContent-Type: application/json; charset=utf-8",
            "",
        )
        .await;
        assert_eq!(code, 200, "{text}");
        assert_eq!(stops(&s), 1);
        s.stop.cancel();
    }

    #[tokio::test]
    async fn a_request_with_an_origin_is_refused_with_403() {
        let s = server(Surface::Control).await;
        let (code, text) = send(
            &s,
            "POST /stop HTTP/1.1\r\nContent-Type: application/json\r\nOrigin: http://evil.example",
            "{}",
        )
        .await;
        assert_eq!(code, 403, "{text}");
        assert!(text.contains("Origin"), "{text}");
        let (code, text) = send(&s, "GET /status HTTP/1.1\r\nOrigin: null", "").await;
        assert_eq!(code, 403, "reads too: {text}");
        assert_eq!(stops(&s), 0);
        s.stop.cancel();
    }

    #[tokio::test]
    async fn the_status_surface_refuses_every_state_changing_route() {
        let s = server(Surface::Status).await;
        for path in STATE_CHANGING {
            for method in ["POST", "PUT", "DELETE"] {
                let (code, text) = send(
                    &s,
                    &format!("{method} {path} HTTP/1.1\r\nContent-Type: application/json"),
                    "{}",
                )
                .await;
                assert_eq!(code, 405, "{method} {path}: {text}");
                assert!(text.contains("read-only"), "{text}");
            }
            let (code, _) = send(
                &s,
                &format!("POST {path} HTTP/1.1\r\nContent-Type: text/plain"),
                "{}",
            )
            .await;
            assert_eq!(code, 415, "{path}");
        }
        assert_eq!(stops(&s), 0, "nothing reached the router");
        s.stop.cancel();
    }
}
