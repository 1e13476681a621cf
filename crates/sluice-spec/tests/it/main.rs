//! Integration tests of `sluice-spec`: whole files in, specs or rendered errors out.

mod docs;
mod errors;
mod examples;
