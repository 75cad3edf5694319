//! The handlers, one file per route group; [`crate::api_server`] mounts them.

pub(crate) mod batches;
pub(crate) mod cdn;
pub(crate) mod costs;
pub(crate) mod dashboard;
pub(crate) mod estimate;
pub(crate) mod health;
pub(crate) mod images;
pub(crate) mod jobs;
pub(crate) mod openai_compat;
pub(crate) mod prices;
pub(crate) mod verify;
