//! The split: during an experiment, which variant a request goes to, by its
//! sticky key (the cookie, set here on first contact, or a header), or by
//! `X-Sluice-Variant` where the environment allows forcing.

use std::task::{Context, Poll};

use http::header::HeaderValue;
use tower::{Layer, Service};

use super::{Choice, Peer, ProxyFuture, ProxyRequest, ProxyResponse};
use crate::route::Route;
use crate::split::{COOKIE, FORCE_HEADER, Sticky, Variant, new_key, user_id};

#[derive(Clone)]
pub struct SplitLayer {
    route: Route,
}

impl SplitLayer {
    pub fn new(route: Route) -> Self {
        SplitLayer { route }
    }
}

impl<S> Layer<S> for SplitLayer {
    type Service = SplitService<S>;
    fn layer(&self, inner: S) -> SplitService<S> {
        SplitService {
            inner,
            route: self.route.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SplitService<S> {
    inner: S,
    route: Route,
}

impl<S> Service<ProxyRequest> for SplitService<S>
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

    fn call(&mut self, mut request: ProxyRequest) -> ProxyFuture {
        let peer = request
            .extensions()
            .get::<Peer>()
            .map_or(([0, 0, 0, 0], 0).into(), |p| p.addr);
        let (choice, new_cookie) = choose(&self.route, request.headers(), peer);
        request.extensions_mut().insert(choice);
        let answered = self.inner.call(request);
        Box::pin(async move {
            let mut response = answered.await?;
            if let Some(key) = new_cookie
                && let Ok(cookie) = HeaderValue::from_str(&set_cookie(&key))
            {
                response
                    .headers_mut()
                    .append(http::header::SET_COOKIE, cookie);
            }
            Ok(response)
        })
    }
}

/// The variant a request goes to, and the cookie to set when the user is new.
fn choose(
    route: &Route,
    headers: &http::HeaderMap,
    peer: std::net::SocketAddr,
) -> (Choice, Option<String>) {
    let current = route.current_split();
    let Some(split) = current.as_deref() else {
        return (
            Choice {
                variant: None,
                user: None,
                share_b: 0.0,
            },
            None,
        );
    };
    if split.allow_force
        && let Some(forced) = headers
            .get(FORCE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Variant::parse)
    {
        // A forced request is no sample of the split: it expects what it gets.
        let share_b = if forced == Variant::B { 1.0 } else { 0.0 };
        let choice = Choice {
            variant: Some(forced),
            user: None,
            share_b,
        };
        return (choice, None);
    }
    let (key, new_cookie) = match &split.sticky {
        Sticky::Cookie => match cookie(headers, COOKIE) {
            Some(key) => (key, None),
            None => {
                let key = new_key();
                (key.clone(), Some(key))
            }
        },
        // Without the header, the client's address is the best key there is.
        Sticky::Header(name) => (
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| peer.ip().to_string(), String::from),
            None,
        ),
    };
    // One hash of the key gives both the variant and the user goals count.
    let user = user_id(&key);
    let choice = Choice {
        variant: Some(split.variant_of(user)),
        user: Some(user),
        share_b: split.percent() / 100.0,
    };
    (choice, new_cookie)
}

/// The `Set-Cookie` value that gives a new user its key for a year.
fn set_cookie(key: &str) -> String {
    const ATTRIBUTES: &str = "; Path=/; HttpOnly; SameSite=Lax; Max-Age=31536000";
    let mut cookie = String::with_capacity(COOKIE.len() + 1 + key.len() + ATTRIBUTES.len());
    cookie.push_str(COOKIE);
    cookie.push('=');
    cookie.push_str(key);
    cookie.push_str(ATTRIBUTES);
    cookie
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::Split;
    use http_body_util::{BodyExt, Empty};
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    fn stack(
        route: Route,
    ) -> impl Service<ProxyRequest, Response = ProxyResponse, Error = std::convert::Infallible>
    {
        ServiceBuilder::new()
            .layer(SplitLayer::new(route))
            .service(service_fn(|request: ProxyRequest| async move {
                let choice = *request.extensions().get::<Choice>().unwrap();
                let mut response =
                    http::Response::new(Empty::new().map_err(|n| match n {}).boxed());
                let variant = choice.variant.map_or("none", |v| v.as_str());
                response
                    .headers_mut()
                    .insert("chosen", HeaderValue::from_static(variant));
                Ok::<_, std::convert::Infallible>(response)
            }))
    }

    fn request(cookie: Option<&str>) -> ProxyRequest {
        let mut request = http::Request::new(Empty::new().map_err(|n| match n {}).boxed());
        if let Some(c) = cookie {
            request
                .headers_mut()
                .insert(http::header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        request
    }

    #[tokio::test]
    async fn a_new_user_gets_a_cookie_and_keeps_the_variant_it_names() {
        let route = Route::default();
        let none = stack(route.clone()).oneshot(request(None)).await.unwrap();
        assert_eq!(none.headers()["chosen"], "none", "no experiment, no split");
        route.set_split(Some(Split::new(50.0, Sticky::Cookie, false).unwrap()));
        let first = stack(route.clone()).oneshot(request(None)).await.unwrap();
        let set = first.headers()[http::header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_string();
        let pair = set.split(';').next().unwrap().to_string();
        for _ in 0..5 {
            let again = stack(route.clone())
                .oneshot(request(Some(&pair)))
                .await
                .unwrap();
            assert_eq!(again.headers()["chosen"], first.headers()["chosen"]);
            assert!(again.headers().get(http::header::SET_COOKIE).is_none());
        }
    }
}
