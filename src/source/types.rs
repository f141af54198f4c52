//! PostgreSQL types to Arrow (being written).
