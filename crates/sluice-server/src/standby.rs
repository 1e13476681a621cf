//! A server standing by (another holds the controllers' lease). It serves
//! the live streams (events, a run's log) itself from what the holder tells
//! over PostgreSQL ([`crate::relay`]), the reads that need only the
//! store ([`crate::api::store_reads`]) with the dashboard's pages that do
//! ([`crate::ui::store_pages`]), and webhooks, which it holds in the store
//! for the server running CI, even while no server acts. Every
//! other request it forwards to the holder, bodies streamed both ways, as
//! Vault's and Nomad's standbys do. So every server serves the API, the
//! dashboard and webhooks, and one acts. Once this server takes the lease
//! over, [`Switch`] sends requests to its own router instead; the streams
//! it serves go on.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRef, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_store::Store;
use tower::ServiceExt;

use crate::ApiError;
use crate::api::events::Live;
use crate::auth::Gate;

/// Set on a forwarded request: a standby never forwards one again, so a
/// lease naming a server that is itself standing by cannot make a loop.
const FORWARDED_BY: &str = "x-sluice-forwarded-by";

/// The client's address a standby names on a forwarded request, and its
/// signature by the servers' shared secret.
const CLIENT: &str = "x-sluice-client";
const CLIENT_SIGNATURE: &str = "x-sluice-client-signature";

/// Signs and checks the client address a standby passes on, so that the
/// server answering counts sign-in failures and connections by the real
/// client, not by the standby (which would let one client lock out all
/// the others that come through it). Anyone else's claim is ignored.
pub struct Vouch {
    key: Vec<u8>,
}

impl Vouch {
    pub fn new(secret: &str) -> Vouch {
        Vouch {
            key: secret.as_bytes().to_vec(),
        }
    }

    fn sign(&self, ip: &str) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("any key");
        mac.update(ip.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// Puts `ip` and its signature on a request about to be forwarded.
    fn vouch_for(&self, headers: &mut axum::http::HeaderMap, ip: std::net::IpAddr) {
        let ip = ip.to_string();
        if let (Ok(named), Ok(signed)) = (
            HeaderValue::from_str(&ip),
            HeaderValue::from_str(&self.sign(&ip)),
        ) {
            headers.insert(HeaderName::from_static(CLIENT), named);
            headers.insert(HeaderName::from_static(CLIENT_SIGNATURE), signed);
        }
    }

    /// The client address a peer vouched for, when its signature holds.
    pub fn vouched(&self, headers: &axum::http::HeaderMap) -> Option<std::net::IpAddr> {
        use hmac::Mac;
        let ip = headers.get(CLIENT)?.to_str().ok()?;
        let given = hex::decode(headers.get(CLIENT_SIGNATURE)?.to_str().ok()?).ok()?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(ip.as_bytes());
        mac.verify_slice(&given).ok()?;
        ip.parse().ok()
    }
}

/// Where requests go: to this server's own router once it holds the
/// lease, else to what a standby serves itself or forwards.
#[derive(Clone)]
pub struct Switch {
    own: Arc<RwLock<Option<Router>>>,
    standby: Router,
}

/// What a standby's own routes reach.
#[derive(Clone)]
struct Standby {
    gate: Gate,
    live: Live,
    forwarder: Arc<Forwarder>,
}

impl FromRef<Standby> for Gate {
    fn from_ref(standby: &Standby) -> Gate {
        standby.gate.clone()
    }
}

impl FromRef<Standby> for Store {
    fn from_ref(standby: &Standby) -> Store {
        standby.gate.store.clone()
    }
}

impl FromRef<Standby> for Live {
    fn from_ref(standby: &Standby) -> Live {
        standby.live.clone()
    }
}

impl Switch {
    /// A switch for server `me`, whose streams show `events` while it
    /// stands by.
    pub fn new(
        store: Store,
        me: String,
        vouch: Arc<Vouch>,
        events: tokio::sync::broadcast::Sender<sluice_ci::Event>,
    ) -> Switch {
        let standby = Standby {
            gate: Gate {
                store: store.clone(),
                tokens: Arc::default(),
            },
            live: Live {
                store: store.clone(),
                events,
            },
            forwarder: Arc::new(Forwarder::new(store, me, vouch)),
        };
        let own = (crate::api::events::routes())
            .merge(crate::api::store_reads())
            .route("/hooks/{repo}", post(crate::api::hooks::hold))
            .layer(map_response(crate::api::json_errors));
        Switch {
            own: Arc::default(),
            standby: Router::new()
                .route("/api/v1/health", get(health))
                .route("/metrics", get(metrics))
                .nest("/api/v1", own)
                .merge(crate::ui::store_pages())
                .fallback(forward)
                // A write to a path whose read it answers itself.
                .method_not_allowed_fallback(forward)
                // Its own pages are the dashboard's as much as the holder's.
                .layer(map_response(crate::security_headers))
                .with_state(standby),
        }
    }

    /// From now on this server answers itself.
    pub fn serve_own(&self, router: Router) {
        *self.own.write().unwrap() = Some(router);
    }

    /// The router that answers through this switch.
    pub fn router(&self) -> Router {
        Router::new().fallback(route).with_state(self.clone())
    }
}

/// What a standby's `/metrics` says: that it stands by, and nothing of
/// the holder's (environments, runs), which the holder's own serves.
const STANDBY_METRICS: &str = "# HELP sluice_standby Whether this server stands by while another runs the controllers.\n# TYPE sluice_standby gauge\nsluice_standby 1\n";

async fn route(State(switch): State<Switch>, request: Request) -> Response {
    let own = switch.own.read().unwrap().clone();
    let router = own.unwrap_or(switch.standby);
    match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Each server answers for itself whether it is up, so that a load
/// balancer keeps a standby while the holder is being replaced.
async fn health() -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "role": "standby",
    }))
    .into_response()
}

/// Its own metrics too: the holder's, forwarded, would be counted once
/// per server by a scraper of every server.
async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        STANDBY_METRICS,
    )
        .into_response()
}

async fn forward(State(standby): State<Standby>, request: Request) -> Response {
    standby.forwarder.forward(request).await
}

struct Forwarder {
    store: Store,
    /// This server's name in answers (`x-sluice-forwarded-by`).
    me: String,
    vouch: Arc<Vouch>,
    client: Client<HttpConnector, Body>,
}

/// Headers of one connection, not of the request: not passed on.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Forwarder {
    fn new(store: Store, me: String, vouch: Arc<Vouch>) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Forwarder {
            store,
            me,
            vouch,
            // HTTP/2 to the holder: every forwarded request, live streams
            // and agents' long polls included, shares one connection, far
            // below the holder's limit of connections per address.
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    /// The holder's answer; while no server answers for the controllers,
    /// an error that says when to ask again, or a page that does so by
    /// itself for a person's browser.
    async fn forward(&self, request: Request) -> Response {
        let page = is_page(&request);
        match self.to_holder(request).await {
            Ok(answer) => answer,
            Err(NoHolder(_)) if page => switching_page(),
            Err(NoHolder(why)) => {
                let mut answer = why.into_response();
                (answer.headers_mut()).insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
                answer
            }
        }
    }

    async fn to_holder(&self, mut request: Request) -> Result<Response, NoHolder> {
        if request.headers().contains_key(FORWARDED_BY) {
            return Err(unavailable(
                "this request was forwarded already, to a server that is standing by itself",
            ));
        }
        let lease = match self.store.controllers().await {
            Ok(Some(lease)) if lease.left_ms >= 0 => lease,
            Ok(_) => {
                return Err(unavailable(
                    "no server runs the controllers right now (the one that did stopped); one standing by takes over within the lease",
                ));
            }
            Err(e) => return Ok(ApiError::internal(e).into_response()),
        };
        if lease.holder == self.me {
            return Err(unavailable(
                "this server is taking the controllers over and starts its engines now",
            ));
        }
        let Some(uri) = forwarded_uri(&lease.address, request.uri()) else {
            return Ok(ApiError::internal(format!(
                "the controllers' holder gave an address that is not http://HOST:PORT: {}",
                lease.address
            ))
            .into_response());
        };
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let headers = request.headers_mut();
        strip_hop_by_hop(headers);
        // What the client claims is dropped; what this server saw is signed.
        headers.remove(CLIENT);
        headers.remove(CLIENT_SIGNATURE);
        if let Some(peer) = peer {
            self.vouch.vouch_for(headers, peer);
        }
        if let Ok(me) = HeaderValue::from_str(&self.me) {
            headers.insert(HeaderName::from_static(FORWARDED_BY), me);
        }
        *request.uri_mut() = uri;
        match self.client.request(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Body::new(body)))
            }
            Err(e) => {
                tracing::warn!(to = %lease.address, error = %e, "could not forward a request");
                Err(NoHolder(
                    ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "bad_gateway",
                        format!(
                            "the server that runs the controllers ({}) did not answer: {e}",
                            lease.address
                        ),
                    )
                    .with_hint(
                        "retry in a few seconds: a server standing by takes over when it stays silent",
                    ),
                ))
            }
        }
    }
}

/// No server answers for the controllers now (none holds them, this one
/// is taking them over, or the holder is out of reach): why, to be asked
/// again in a few seconds.
struct NoHolder(ApiError);

fn unavailable(message: &str) -> NoHolder {
    NoHolder(
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            .with_hint("retry in a few seconds"),
    )
}

/// Whether a person's browser asks for a dashboard page (not the API, not
/// a scraper).
fn is_page(request: &Request) -> bool {
    let path = request.uri().path();
    let html = (request.headers().get(header::ACCEPT))
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    html && request.method() == axum::http::Method::GET && !path.starts_with("/api/")
}

/// What a dashboard page shows while no server acts: a page that asks
/// again by itself (the `Refresh` header: no script, nothing the pages'
/// content policy forbids), so a takeover is a few seconds' wait.
fn switching_page() -> Response {
    const PAGE: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sluice: switching servers</title></head><body><h1>Switching servers</h1><p>The server that runs Sluice's controllers stopped answering, and another is taking over. This page loads again by itself in a few seconds.</p></body></html>";
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::RETRY_AFTER, "2"),
            (header::REFRESH, "2"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    // Headers a `Connection:` header names are hop-by-hop too.
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|n| n.trim().to_ascii_lowercase()))
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

/// `address` (`http://HOST:PORT`) with the request's path and query.
fn forwarded_uri(address: &str, original: &Uri) -> Option<Uri> {
    let base: Uri = address.parse().ok()?;
    if base.scheme_str() != Some("http") || base.authority().is_none() {
        return None;
    }
    let path = original.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme("http")
        .authority(base.authority()?.clone())
        .path_and_query(path)
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_browser_s_get_of_a_dashboard_path_is_a_page() {
        let cases = [
            ("GET", "/changes", "text/html,application/xhtml+xml", true),
            ("GET", "/", "text/html", true),
            ("POST", "/promotions/3/approve", "text/html", false),
            ("GET", "/api/v1/status", "text/html", false),
            ("GET", "/changes", "application/json", false),
            ("GET", "/changes", "", false),
        ];
        for (method, path, accept, page) in cases {
            let mut request = axum::http::Request::builder().method(method).uri(path);
            if !accept.is_empty() {
                request = request.header(header::ACCEPT, accept);
            }
            let request = request.body(Body::empty()).unwrap();
            assert_eq!(is_page(&request), page, "{method} {path} ({accept})");
        }
    }

    #[test]
    fn a_request_goes_to_the_holders_address_with_its_path_and_query() {
        let original: Uri = "/api/v1/runs?repo=shop&limit=5".parse().unwrap();
        let table = [
            (
                "http://10.0.0.2:7300",
                Some("http://10.0.0.2:7300/api/v1/runs?repo=shop&limit=5"),
            ),
            (
                "http://10.0.0.2:7300/ignored",
                Some("http://10.0.0.2:7300/api/v1/runs?repo=shop&limit=5"),
            ),
            ("https://10.0.0.2:7300", None),
            ("10.0.0.2:7300", None),
            ("", None),
        ];
        for (address, expected) in table {
            let got = forwarded_uri(address, &original).map(|u| u.to_string());
            assert_eq!(got.as_deref(), expected, "{address}");
        }
    }

    #[test]
    fn only_a_peers_signature_names_the_client() {
        let ours = Vouch::new("shared secret");
        let mut headers = axum::http::HeaderMap::new();
        ours.vouch_for(&mut headers, "203.0.113.9".parse().unwrap());
        assert_eq!(ours.vouched(&headers), Some("203.0.113.9".parse().unwrap()));
        // Another secret, a changed address, or no signature: not vouched.
        assert_eq!(Vouch::new("guessed").vouched(&headers), None);
        let mut changed = headers.clone();
        changed.insert(CLIENT, HeaderValue::from_static("203.0.113.10"));
        assert_eq!(ours.vouched(&changed), None);
        let mut unsigned = headers.clone();
        unsigned.remove(CLIENT_SIGNATURE);
        assert_eq!(ours.vouched(&unsigned), None);
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-private"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["authorization"]);
    }
}
