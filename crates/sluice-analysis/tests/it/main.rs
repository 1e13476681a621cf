//! Decision quality, measured by simulation with a fixed seed: how often an
//! A/A experiment is rolled back, and how fast a worse B is caught.

mod goals;
mod simulate;
