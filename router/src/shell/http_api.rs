//! The local HTTP API (`--http-addr`, default `127.0.0.1:6784`).
//!
//! Every endpoint is answered by the router task: the handler sends an
//! [`ApiRequest`] with a oneshot reply over the router's event queue, so the
//! API never touches router state directly. Bodies are JSON; errors are
//! always `{"error": "..."}`.
//!
//! | Method and path | Body | Answer |
//! |---|---|---|
//! | `GET /status` | | [`RouterStatus`] |
//! | `POST /connect` | [`PeersRequest`] | [`ConnectResponse`] |
//! | `POST /forget` | [`PeersRequest`] | [`ForgetResponse`] |
//! | `POST /stop` | | [`StopResponse`], then the router shuts down |

use std::convert::Infallible;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::core::status::RouterStatus;
use crate::core::wire::addr::PeerAddr;
use crate::shell::daemon::Event;

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
}

/// Answer to `POST /connect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectResponse {
    /// The targets now kept connected, normalised to `HOST:PORT`.
    pub added: Vec<String>,
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

/// Every error the API returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}

/// A request for the router task, with where to send the answer.
#[derive(Debug)]
pub enum ApiRequest {
    Status(oneshot::Sender<RouterStatus>),
    Connect(Vec<PeerAddr>, oneshot::Sender<()>),
    Forget(Vec<PeerAddr>, oneshot::Sender<Vec<PeerAddr>>),
    Stop(oneshot::Sender<()>),
}

/// The router task has stopped (or is stopping) and answers nothing more.
#[derive(Debug)]
struct RouterGone;

/// How handlers reach the router task.
#[derive(Clone, Debug)]
pub(crate) struct ApiHandle {
    events: mpsc::Sender<Event>,
}

impl ApiHandle {
    pub(crate) fn new(events: mpsc::Sender<Event>) -> Self {
        Self { events }
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

/// Serves the API until `stop` is cancelled, then gives in-flight requests
/// a moment to finish.
pub(crate) async fn serve(listener: TcpListener, api: ApiHandle, stop: CancellationToken) {
    let conns = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
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
                async move { Ok::<_, Infallible>(handle(&api, req).await) }
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

async fn handle(api: &ApiHandle, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = match (&method, path.as_str()) {
        (&Method::GET, "/status") => api
            .call(ApiRequest::Status)
            .await
            .map(|status| json(StatusCode::OK, &status)),
        (&Method::POST, "/connect") => match read_peers(req).await {
            Ok(peers) => api
                .call(|tx| ApiRequest::Connect(peers.clone(), tx))
                .await
                .map(|()| {
                    let added = peers.iter().map(ToString::to_string).collect();
                    json(StatusCode::OK, &ConnectResponse { added })
                }),
            Err(response) => Ok(response),
        },
        (&Method::POST, "/forget") => match read_peers(req).await {
            Ok(peers) => api
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
        (_, "/status") => Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} /status is not supported; use GET"),
        )),
        (_, "/connect" | "/forget" | "/stop") => Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path} is not supported; use POST"),
        )),
        _ => Ok(error(
            StatusCode::NOT_FOUND,
            format!(
                "no such endpoint: {method} {path}; the API serves GET /status, POST /connect, POST /forget and POST /stop"
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

/// Reads and validates a [`PeersRequest`]; all addresses must parse, or
/// nothing is applied.
async fn read_peers(req: Request<Incoming>) -> Result<Vec<PeerAddr>, Response<Full<Bytes>>> {
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
    let request: PeersRequest = serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid request body ({e}); expected JSON like {{\"peers\": [\"192.0.2.7:6783\"]}}"
            ),
        )
    })?;
    if request.peers.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "no peers given; list at least one HOST[:PORT] in \"peers\"".into(),
        ));
    }
    request
        .peers
        .iter()
        .map(|p| PeerAddr::from_str(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
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

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
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
