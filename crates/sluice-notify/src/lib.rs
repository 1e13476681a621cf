//! Notifications: tells people where they already are (chat, webhooks,
//! email) what Sluice decided. The change log is the source: each event a
//! route picks becomes a notification in the same transaction (the
//! outbox, in `sluice-store`); the worker here collapses bursts into
//! messages, renders them for each kind of channel and delivers them with
//! retries.

pub mod channel;
pub mod deliver;
pub mod render;
pub mod retry;
mod worker;

pub use channel::{ChannelInput, ChannelKind, Target, service_routes, validate};
pub use worker::{Notifier, NotifyConfig, test_channel};
