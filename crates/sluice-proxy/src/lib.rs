//! The load balancer in front of each environment: one listener per
//! environment's `listen` address, routing each request to a healthy,
//! non-draining backend of its [`Route`], streaming bodies both ways over
//! pooled keep-alive connections, over HTTP or HTTPS. It knows nothing of the store: whoever
//! deploys tells it which backends exist and whether they are healthy.

pub mod access_log;
pub mod acme;
pub mod goals;
mod layers;
mod route;
mod server;
mod split;
mod table;
mod telemetry;
pub mod tls;

pub use access_log::AccessLog;
pub use route::{Backend, EJECT_AFTER, EJECT_FOR, Route};
pub use server::{Limits, Listener, redirect_to_https};
pub use split::{COOKIE, FORCE_HEADER, Split, Sticky, Variant, bucket};
pub use table::{RouteTable, TableBackend, TableSplit};
pub use telemetry::{
    AccessEntry, InstanceWindow, Metrics, SecondClock, SecondWindow, Telemetry, VariantWindow,
    WINDOW_SECONDS, system_second,
};
