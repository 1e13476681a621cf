//! Integration tests of `sluice-spec`: whole files in, specs or rendered errors out.

mod errors;
mod examples;
