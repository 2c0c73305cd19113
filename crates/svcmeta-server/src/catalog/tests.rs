//! Catalog tests.
