//! Real servers for tests, started and cleaned up by the test that needs them:
//! a single-node Garage S3 server ([`garage`]) and a throwaway PostgreSQL schema
//! ([`postgres`]). A missing server is a test failure with the command that sets
//! it up, never a skip.

pub mod garage;
pub mod postgres;
