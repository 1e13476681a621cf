//! Recording: each request, once its answer's body has ended, counted in the
//! metrics and the second's window of its variant and written to the access
//! log, with who served it, its status, bytes, latency and upstream error.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::{
    ClientFault, ProxyBody, ProxyFuture, ProxyRequest, ProxyResponse, Served, UpstreamError,
};
use crate::split::Variant;
use crate::telemetry::{AccessEntry, Telemetry};

#[derive(Clone)]
pub struct RecordLayer {
    telemetry: Telemetry,
}

impl RecordLayer {
    pub fn new(telemetry: Telemetry) -> Self {
        RecordLayer { telemetry }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;
    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    telemetry: Telemetry,
}

impl<S> Service<ProxyRequest> for Record<S>
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
        // The target is kept only for an access log.
        let logged = self.telemetry.logs_access();
        let mut trace = Trace {
            telemetry: self.telemetry.clone(),
            start: Instant::now(),
            method: request.method().clone(),
            uri: logged.then(|| request.uri().clone()),
            status: 0,
            served: None,
            error: None,
            client_fault: false,
            bytes: 0,
        };
        let answered = self.inner.call(request);
        Box::pin(async move {
            let response = answered.await?;
            trace.status = response.status().as_u16();
            trace.served = response.extensions().get::<Served>().cloned();
            let extensions = response.extensions();
            trace.client_fault = extensions.get::<ClientFault>().is_some()
                || extensions.get::<super::OwnAnswer>().is_some();
            trace.error = match (
                extensions.get::<UpstreamError>(),
                extensions.get::<ClientFault>(),
            ) {
                (Some(upstream), _) => Some(upstream.message.clone()),
                (None, Some(ClientFault(why))) => Some(format!("client: {why}")),
                (None, None) => None,
            };
            let (head, body) = response.into_parts();
            let body = Recorded { inner: body, trace }.boxed();
            Ok(ProxyResponse::from_parts(head, body))
        })
    }
}

/// What is known of a request, recorded when its answer ends.
struct Trace {
    telemetry: Telemetry,
    start: Instant,
    method: http::Method,
    uri: Option<http::Uri>,
    status: u16,
    served: Option<Served>,
    error: Option<String>,
    /// The client's own error, or the proxy's own answer: logged, counted
    /// for no variant or instance.
    client_fault: bool,
    bytes: u64,
}

impl Drop for Trace {
    fn drop(&mut self) {
        let (variant, backend, share_b) = match &self.served {
            Some(s) => (s.variant, s.backend.as_deref(), s.share_b),
            None => (Variant::A, None, 0.0),
        };
        let (release, instance) = backend.map_or(("", "-"), |b| (&*b.release, &*b.id));
        let entry = AccessEntry {
            time: None,
            method: self.method.as_str(),
            path: self.uri.as_ref().map_or("", |uri| uri.path()),
            status: self.status,
            latency_ms: self.start.elapsed().as_secs_f64() * 1000.0,
            bytes: self.bytes,
            variant: variant.as_str(),
            release,
            instance,
            error: self.error.as_deref(),
        };
        if self.client_fault {
            self.telemetry.log_access(&entry);
        } else {
            self.telemetry.record(&entry, variant, backend, share_b);
        }
    }
}

/// An answer's body, streamed through; it counts the bytes until it ends,
/// then the request is recorded.
struct Recorded {
    inner: ProxyBody,
    trace: Trace,
}

impl Body for Recorded {
    type Data = Bytes;
    type Error = super::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.trace.bytes += data.len() as u64;
        }
        if let Poll::Ready(Some(Err(e))) = &polled {
            self.trace.error = Some(e.to_string());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
