//! The request path as tower layers, one per concern, outermost first:
//! [`record`] (metrics, windows, access log) → [`forwarded`] (hop-by-hop
//! headers, `Forwarded`, `X-Forwarded-For`, `Via`) → [`split`] (the variant,
//! the sticky cookie) → [`balance`] (the backend by power of two choices,
//! one retry when it could not be connected to, attribution headers) →
//! [`backend`] (per-backend in flight, connect errors, passive ejection) →
//! [`timeout`] → [`upstream`] (the pooled client). Each is a `Service` over
//! `Request<ProxyBody>` that never fails: errors become answers, and what a
//! layer learns travels in the request's or the answer's extensions.

pub mod backend;
pub mod balance;
pub mod forwarded;
pub mod record;
pub mod split;
pub mod timeout;
pub mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use crate::route::{Backend, InFlight};
use crate::split::Variant;

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;
pub type ProxyRequest = Request<ProxyBody>;
pub type ProxyResponse = Response<ProxyBody>;
pub type ProxyFuture = Pin<Box<dyn Future<Output = Result<ProxyResponse, Infallible>> + Send>>;

/// The client (request extension, made once per connection): its address
/// and how the forwarding headers name it (see [`forwarded`]).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    ip: HeaderValue,
    forwarded: HeaderValue,
}

/// The variant the split chose (request extension); `None` outside an experiment.
#[derive(Clone, Copy, Debug)]
pub struct Choice {
    pub variant: Option<Variant>,
    /// B's weight (0 to 1) for this request: what it expects of the split.
    pub share_b: f64,
}

/// The backend the balancer picked, counted in flight while this lives
/// (request extension, then kept by the answer's body).
#[derive(Clone)]
pub struct Picked(Arc<InFlight>);

impl Picked {
    pub(crate) fn new(guard: InFlight) -> Picked {
        Picked(Arc::new(guard))
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.0.0
    }
}

/// Who served an answer (answer extension); no backend when none could.
#[derive(Clone, Debug)]
pub struct Served {
    pub variant: Variant,
    pub backend: Option<Arc<Backend>>,
    pub share_b: f64,
}

/// Why there is no answer from a backend (answer extension).
#[derive(Clone, Debug)]
pub struct UpstreamError {
    /// The connection failed before a byte was sent: safe to try elsewhere.
    pub connect: bool,
    pub message: String,
}

/// A proxy's own answer: JSON naming what went wrong.
pub fn error_response(status: StatusCode, message: &str) -> ProxyResponse {
    let body = format!("{{\"error\":{{\"code\":\"proxy\",\"message\":\"{message}\"}}}}\n");
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
