//! Throwaway PostgreSQL schemas for tests (filled in by the fleet-mode work).
