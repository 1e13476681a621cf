//! Releases, environments and deployments.
