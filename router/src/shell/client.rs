//! A small client for the router's control API on its unix socket
//! ([`crate::shell::api_socket`]), used by the `weft` CLI.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited, combinators::BoxBody};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::core::status::RouterStatus;
use crate::shell::api_socket;
use crate::shell::attach::AttachmentInfo;
use crate::shell::describe_io_error;
use crate::shell::http_api::{
    AttachRequest, CidrsRequest, ConnectResponse, DetachRequest, DetachResponse, ErrorResponse,
    ExposeResponse, ForgetResponse, HideResponse, PeersRequest, PsResponse, StopResponse,
};

/// The whole exchange must finish within this; the router answers from
/// memory, so a slower answer means it is wedged.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A status of hundreds of peers is well below this.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no weft router is answering at {} (is it running? start it with `weft launch`, or give the --home or --api-socket it was launched with)",
        .path.display()
    )]
    NotRunning { path: PathBuf },
    #[error(
        "permission denied on {}: only root{} may use the weft control socket; run this as root (sudo) or as a member of its group (chosen with `weft launch --api-group`)",
        .path.display(),
        .group.as_deref().map(|g| format!(" and members of group {g}")).unwrap_or_default()
    )]
    PermissionDenied {
        path: PathBuf,
        /// The socket's group, if it could be read.
        group: Option<String>,
    },
    #[error("cannot reach the weft router API at {}: {}", .path.display(), describe_io_error(.error))]
    Connect { path: PathBuf, error: io::Error },
    #[error(
        "the weft router at {} did not answer within {}s; check its log",
        .path.display(),
        REQUEST_TIMEOUT.as_secs()
    )]
    Timeout { path: PathBuf },
    #[error("the weft router at {} refused the request: {message}", .path.display())]
    Api {
        path: PathBuf,
        status: u16,
        message: String,
    },
    #[error("talking to the weft router at {} failed: {error}", .path.display())]
    Http { path: PathBuf, error: hyper::Error },
    #[error("the weft router at {} sent an answer weft cannot read: {why}", .path.display())]
    BadResponse { path: PathBuf, why: String },
}

impl ClientError {
    /// Whether the error says nothing listens on the socket.
    pub fn is_not_running(&self) -> bool {
        matches!(self, ClientError::NotRunning { .. })
    }
}

/// Talks to one router's control API.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the router listening on unix socket `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn get_status(&self) -> Result<RouterStatus, ClientError> {
        self.request(Method::GET, "/status", None).await
    }

    /// Adds `peers` as targets; with `replace`, they become the only ones.
    pub async fn post_connect(
        &self,
        peers: &[String],
        replace: bool,
    ) -> Result<ConnectResponse, ClientError> {
        let body = json_body(&PeersRequest {
            peers: peers.to_vec(),
            replace,
        });
        self.request(Method::POST, "/connect", Some(body)).await
    }

    pub async fn post_forget(&self, peers: &[String]) -> Result<ForgetResponse, ClientError> {
        let body = json_body(&PeersRequest {
            peers: peers.to_vec(),
            replace: false,
        });
        self.request(Method::POST, "/forget", Some(body)).await
    }

    pub async fn post_expose(&self, cidrs: &[String]) -> Result<ExposeResponse, ClientError> {
        let body = json_body(&CidrsRequest {
            cidrs: cidrs.to_vec(),
        });
        self.request(Method::POST, "/expose", Some(body)).await
    }

    pub async fn post_hide(&self, cidrs: &[String]) -> Result<HideResponse, ClientError> {
        let body = json_body(&CidrsRequest {
            cidrs: cidrs.to_vec(),
        });
        self.request(Method::POST, "/hide", Some(body)).await
    }

    pub async fn post_password(
        &self,
        password: &str,
        also_accept: Option<&str>,
    ) -> Result<crate::shell::http_api::PasswordResponse, ClientError> {
        let body = json_body(&crate::shell::http_api::PasswordRequest {
            password: password.to_owned(),
            also_accept: also_accept.map(str::to_owned),
        });
        self.request(Method::POST, "/password", Some(body)).await
    }

    pub async fn post_stop(&self) -> Result<StopResponse, ClientError> {
        self.request(Method::POST, "/stop", Some(b"{}".to_vec()))
            .await
    }

    pub async fn post_attach(
        &self,
        request: &AttachRequest,
    ) -> Result<AttachmentInfo, ClientError> {
        let body = json_body(request);
        self.request(Method::POST, "/attach", Some(body)).await
    }

    pub async fn post_detach(
        &self,
        request: &DetachRequest,
    ) -> Result<DetachResponse, ClientError> {
        let body = json_body(request);
        self.request(Method::POST, "/detach", Some(body)).await
    }

    pub async fn get_ps(&self) -> Result<PsResponse, ClientError> {
        self.request(Method::GET, "/ps", None).await
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout {
                path: self.socket.clone(),
            })?
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let path = || self.socket.clone();
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|error| connect_error(&self.socket, error))?;
        let http = |error| ClientError::Http {
            path: path(),
            error,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        // Drives the connection; ends when `sender` is dropped.
        tokio::spawn(conn);

        // HTTP/1.1 needs a Host; a socket has no name, so a fixed one.
        let mut request = Request::builder()
            .method(method)
            .uri(endpoint)
            .header(HOST, HeaderValue::from_static("weft"));
        let body: BoxBody<Bytes, hyper::Error> = match body {
            Some(bytes) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(bytes))
                    .map_err(|never| match never {})
                    .boxed()
            }
            None => Empty::new().map_err(|never| match never {}).boxed(),
        };
        let request = request.body(body).map_err(|e| ClientError::BadResponse {
            path: path(),
            why: format!("cannot build request: {e}"),
        })?;
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| ClientError::BadResponse {
                path: path(),
                why: e.to_string(),
            })?
            .to_bytes();
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<ErrorResponse>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("HTTP {status}"));
            return Err(ClientError::Api {
                path: path(),
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse {
            path: path(),
            why: e.to_string(),
        })
    }
}

/// Names the two usual reasons a connect fails: nothing there, or not
/// allowed (with the socket's group, when it can be read).
fn connect_error(socket: &Path, error: io::Error) -> ClientError {
    let path = socket.to_owned();
    match error.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => {
            ClientError::NotRunning { path }
        }
        io::ErrorKind::PermissionDenied => {
            let group = std::fs::metadata(socket)
                .ok()
                .and_then(|m| api_socket::group_name(m.gid()));
            ClientError::PermissionDenied { path, group }
        }
        _ => ClientError::Connect { path, error },
    }
}

fn json_body<T: serde::Serialize>(body: &T) -> Vec<u8> {
    // Structs of strings and numbers always serialise.
    serde_json::to_vec(body).unwrap_or_default()
}
