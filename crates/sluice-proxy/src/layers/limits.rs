//! What a client's request body may take: its size (413) and the time it
//! may take to arrive (408). Both are the client's doing, so they are
//! answered as such and counted against no instance and no variant. (The
//! head's size and header count are hyper's to enforce, with 431: see
//! `server.rs`.)

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::{
    BodyError, ClientFault, ProxyBody, ProxyFuture, ProxyRequest, ProxyResponse, error_response,
};

/// A limit a request's body broke (the error its body ends with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyLimit {
    /// Larger than this many bytes.
    TooLarge(u64),
    /// Not all there within this time of its head.
    TooSlow(Duration),
}

impl BodyLimit {
    pub fn status(self) -> StatusCode {
        match self {
            BodyLimit::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyLimit::TooSlow(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

impl std::fmt::Display for BodyLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyLimit::TooLarge(max) => {
                write!(f, "the request's body is larger than {max} bytes")
            }
            BodyLimit::TooSlow(limit) => write!(
                f,
                "the request's body did not arrive within {} s",
                limit.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for BodyLimit {}

/// The limit a failed request body broke, if that is why it failed.
pub fn broken_limit(error: &(dyn std::error::Error + 'static)) -> Option<BodyLimit> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(limit) = error.downcast_ref::<BodyLimit>() {
            return Some(*limit);
        }
        if let Some(BodyError(inner)) = error.downcast_ref::<BodyError>()
            && let Some(limit) = inner.downcast_ref::<BodyLimit>()
        {
            return Some(*limit);
        }
        cause = error.source();
    }
    None
}

/// The answer to a request that broke `limit`.
pub fn refused(limit: BodyLimit) -> ProxyResponse {
    let said = limit.to_string();
    let mut response = error_response(limit.status(), &said);
    response.extensions_mut().insert(ClientFault(said));
    response
}

#[derive(Clone, Copy)]
pub struct LimitsLayer {
    max_body: u64,
    body_time: Duration,
}

impl LimitsLayer {
    pub fn new(max_body: u64, body_time: Duration) -> Self {
        LimitsLayer {
            max_body,
            body_time,
        }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;
    fn layer(&self, inner: S) -> Limits<S> {
        Limits {
            inner,
            max_body: self.max_body,
            body_time: self.body_time,
        }
    }
}

#[derive(Clone)]
pub struct Limits<S> {
    inner: S,
    max_body: u64,
    body_time: Duration,
}

impl<S> Service<ProxyRequest> for Limits<S>
where
    S: Service<ProxyRequest, Response = ProxyResponse, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = ProxyResponse;
    type Error = std::convert::Infallible;
    type Future = ProxyFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ProxyRequest) -> ProxyFuture {
        // Most requests have no body: nothing to bound.
        if request.body().is_end_stream() {
            return Box::pin(self.inner.call(request));
        }
        // A declared length over the limit is refused before a byte is sent on.
        if request.body().size_hint().lower() > self.max_body {
            let refused = refused(BodyLimit::TooLarge(self.max_body));
            return Box::pin(async move { Ok(refused) });
        }
        let (max, limit) = (self.max_body, self.body_time);
        let request = request.map(|body| {
            Bounded {
                inner: body,
                seen: 0,
                max,
                limit,
                deadline: Box::pin(tokio::time::sleep(limit)),
            }
            .boxed()
        });
        Box::pin(self.inner.call(request))
    }
}

/// A request body that ends with a [`BodyLimit`] error once it is larger
/// than `max` or later than `limit`.
struct Bounded {
    inner: ProxyBody,
    seen: u64,
    max: u64,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Bounded {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyError(Box::new(BodyLimit::TooSlow(
                this.limit,
            ))))));
        }
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            this.seen += data.map_or(0, |d| d.len() as u64);
            if this.seen > this.max {
                return Poll::Ready(Some(Err(BodyError(Box::new(BodyLimit::TooLarge(
                    this.max,
                ))))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn body(chunks: Vec<&'static str>) -> ProxyBody {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, BodyError>(Frame::data(Bytes::from(c))));
        StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    fn bounded(inner: ProxyBody, max: u64, limit: Duration) -> Bounded {
        Bounded {
            inner,
            seen: 0,
            max,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_ends_with_413() {
        let long = Duration::from_secs(60);
        let within = bounded(body(vec!["abc", "def"]), 6, long).collect().await;
        assert_eq!(within.unwrap().to_bytes(), "abcdef");
        let over = bounded(body(vec!["abc", "defg"]), 6, long).collect().await;
        let error = over.err().unwrap();
        assert_eq!(broken_limit(&error), Some(BodyLimit::TooLarge(6)));
        assert_eq!(BodyLimit::TooLarge(6).status(), 413);
    }

    #[tokio::test]
    async fn a_body_that_stalls_ends_with_408() {
        let never =
            StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, BodyError>>()).boxed();
        let limit = Duration::from_millis(50);
        let error = bounded(never, 100, limit).collect().await.err().unwrap();
        assert_eq!(broken_limit(&error), Some(BodyLimit::TooSlow(limit)));
        assert_eq!(BodyLimit::TooSlow(limit).status(), 408);
    }

    #[test]
    fn other_errors_are_no_limit() {
        let error = BodyError(Box::new(std::io::Error::other("reset")));
        assert_eq!(broken_limit(&error), None);
    }
}
