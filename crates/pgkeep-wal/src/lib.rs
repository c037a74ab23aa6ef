//! PostgreSQL WAL format (work in progress).
