//! End-to-end tests of the `sluice` binary: a real server process over a real
//! socket, real git repositories, real steps, against SQLite and PostgreSQL.

mod support;

mod acme;
mod agents;
mod auth;
mod blog;
mod browser;
mod cd;
mod ci;
mod crash;
mod demo;
mod detection;
mod experiments;
mod goals;
mod hosted;
mod hostile;
mod hosts;
mod https;
mod incidents;
mod init;
mod metrics;
mod notify;
mod restart;
mod servers;
mod validate;
mod wrong_answers;
mod zero_downtime;
