//! The read-only status listener (`--status-addr`, default
//! `127.0.0.1:6782`): what a browser, a dashboard or a monitoring system
//! may read, and nothing that changes the router.
//!
//! | Method and path | Answer |
//! |---|---|
//! | `GET /` | the live topology page (`topology.html`) |
//! | `GET /report` | [`RouterStatus`](crate::core::status::RouterStatus) as JSON |
//! | `GET /status` | `weft status` as plain text |
//! | `GET /status.dot` | `weft status --dot`: the topology in Graphviz |
//! | `GET /metrics` | Prometheus / OpenMetrics ([`metrics`]) |

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::format::{format_dot, format_status};
use crate::shell::http_api::{ApiHandle, RouterGone, error, json};
use crate::shell::metrics;

/// The topology page: self-contained HTML, CSS and JS (no CDN), drawing
/// SVG from `GET /report` every couple of seconds.
const TOPOLOGY_PAGE: &str = include_str!("topology.html");

pub(crate) async fn handle(api: &ApiHandle, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{} {path} is not supported: the status listener is read-only; use GET",
                req.method()
            ),
        );
    }
    let answer = match path {
        "/" => Ok(body("text/html; charset=utf-8", TOPOLOGY_PAGE.into())),
        "/report" => api.status().await.map(|s| json(StatusCode::OK, &s)),
        "/status" => api
            .status()
            .await
            .map(|s| body("text/plain; charset=utf-8", format_status(&s))),
        "/status.dot" => api
            .status()
            .await
            .map(|s| body("text/vnd.graphviz; charset=utf-8", format_dot(&s))),
        "/metrics" => api
            .status()
            .await
            .map(|s| match metrics::encode_status(&s) {
                Ok(text) => body(metrics::CONTENT_TYPE, text),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot encode the metrics: {e}"),
                ),
            }),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no such page: {path}; the status listener serves /, /report, /status, /status.dot and /metrics"
                ),
            );
        }
    };
    let mut response = answer.unwrap_or_else(|RouterGone| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the weft router is shutting down".into(),
        )
    });
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn body(content_type: &'static str, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
