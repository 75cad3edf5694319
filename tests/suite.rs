//! imagegate's end-to-end tests, one binary (one link) with a module per surface:
//! each starts the real `imagegate` binary on a config written for the test.

mod api;
mod dashboard;
mod deferred;
mod deferred_recovery;
mod e2e;
mod fleet;
mod openapi;
mod prices;
mod provenance;
mod support;
mod warm;
mod warm_deferred;
mod webhooks;
