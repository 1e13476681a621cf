//! Per-backend accounting: requests in flight (the gauge, and the count the
//! balancer compares) until the answer's body ends; connect errors; passive
//! ejection after consecutive failures, and the ejections metric.

use std::task::{Context, Poll};

use http_body_util::BodyExt;
use tower::{Layer, Service};

use super::{
    ClientFault, Keep, Kept, Picked, ProxyFuture, ProxyRequest, ProxyResponse, UpstreamError,
};
use crate::split::Variant;
use crate::telemetry::{InstanceMetrics, Telemetry};

#[derive(Clone)]
pub struct BackendLayer {
    telemetry: Telemetry,
}

impl BackendLayer {
    pub fn new(telemetry: Telemetry) -> Self {
        BackendLayer { telemetry }
    }
}

impl<S> Layer<S> for BackendLayer {
    type Service = BackendMetrics<S>;
    fn layer(&self, inner: S) -> BackendMetrics<S> {
        BackendMetrics {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BackendMetrics<S> {
    inner: S,
    telemetry: Telemetry,
}

impl<S> Service<ProxyRequest> for BackendMetrics<S>
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
        let picked = request.extensions().get::<Picked>().cloned();
        let answered = self.inner.call(request);
        let Some(picked) = picked else {
            return Box::pin(answered);
        };
        let held = Held {
            variant: picked.backend().variant(),
            picked,
            telemetry: self.telemetry.clone(),
        };
        held.metrics().in_flight.inc();
        Box::pin(async move {
            let response = answered.await?;
            let extensions = response.extensions();
            match extensions.get::<UpstreamError>() {
                Some(error) => held.failed(error.connect),
                // A client's own error says nothing of the backend either way.
                None if extensions.get::<ClientFault>().is_some() => {}
                None => held.picked.backend().succeeded(),
            }
            let (head, body) = response.into_parts();
            let body = Kept::new(body, held).boxed();
            Ok(ProxyResponse::from_parts(head, body))
        })
    }
}

/// A backend's request, in flight until dropped with the answer's body.
struct Held {
    picked: Picked,
    /// The variant it was counted in, should the backend's change meanwhile.
    variant: Variant,
    telemetry: Telemetry,
}

impl Held {
    fn metrics(&self) -> &InstanceMetrics {
        self.telemetry
            .instance(self.variant, Some(self.picked.backend()))
    }

    /// Counts a failure against the backend, ejecting it after several in a row.
    fn failed(&self, connect: bool) {
        if connect {
            self.metrics().connect_errors.inc();
        }
        let backend = self.picked.backend();
        if backend.failed() {
            tracing::warn!(backend = %backend.id, "ejected after consecutive failures");
            self.metrics().ejections.inc();
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics().in_flight.dec();
    }
}

/// In flight until the answer's body is dropped.
impl Keep for Held {}
