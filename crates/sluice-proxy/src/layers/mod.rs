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
pub mod goals;
pub mod limits;
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
use http_body::Body;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use crate::route::{Backend, InFlight};
use crate::split::Variant;

/// Bodies both ways.
pub type ProxyBody = BoxBody<Bytes, BodyError>;

/// Why a body ended early: the client's or the instance's connection, or a
/// limit the proxy holds a request's body to ([`limits::BodyLimit`]).
/// A named type, not a bare `Box<dyn Error>`, which async blocks' `Send`
/// checks cannot see through.
#[derive(Debug)]
pub struct BodyError(pub Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<hyper::Error> for BodyError {
    fn from(error: hyper::Error) -> Self {
        BodyError(Box::new(error))
    }
}
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
    proto: HeaderValue,
}

/// The variant the split chose (request extension); `None` outside an experiment.
#[derive(Clone, Copy, Debug)]
pub struct Choice {
    pub variant: Option<Variant>,
    /// The user by their sticky key ([`crate::goals::user_id`]); `None`
    /// outside an experiment and for a forced variant.
    pub user: Option<u64>,
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

/// The client broke its own request (a malformed body, a body cut short):
/// it gets a 400, and the request counts against no instance and no variant
/// (answer extension).
#[derive(Clone, Debug)]
pub struct ClientFault(pub String);

/// An answer the entry point gave itself, not an instance (`/_sluice/goal`):
/// logged, counted for no variant or instance (answer extension).
#[derive(Clone, Copy, Debug)]
pub struct OwnAnswer;

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

/// What an answer's body keeps until the body is dropped; told then whether
/// the body was read to its end.
pub trait Keep: Send + 'static {
    fn release(&mut self, _ended: bool) {}
}

/// An answer's body, streamed through untouched, keeping `K` as long as it lives.
pub struct Kept<B: Body, K: Keep> {
    inner: B,
    kept: K,
}

impl<B: Body, K: Keep> Kept<B, K> {
    pub fn new(inner: B, kept: K) -> Self {
        Kept { inner, kept }
    }
}

impl<B, K> Body for Kept<B, K>
where
    B: Body + Unpin,
    K: Keep + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body, K: Keep> Drop for Kept<B, K> {
    fn drop(&mut self) {
        self.kept.release(self.inner.is_end_stream());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Told(Arc<Mutex<Option<bool>>>);

    impl Keep for Told {
        fn release(&mut self, ended: bool) {
            *self.0.lock().unwrap() = Some(ended);
        }
    }

    #[tokio::test]
    async fn what_a_body_keeps_is_told_whether_the_body_was_read_to_the_end() {
        let told = Arc::new(Mutex::new(None));
        let read = Kept::new(Full::new(Bytes::from("all")), Told(told.clone()));
        assert_eq!(read.collect().await.unwrap().to_bytes(), "all");
        assert_eq!(*told.lock().unwrap(), Some(true));

        let dropped = Kept::new(Full::new(Bytes::from("some")), Told(told.clone()));
        drop(dropped);
        assert_eq!(*told.lock().unwrap(), Some(false), "dropped unread");
    }
}
