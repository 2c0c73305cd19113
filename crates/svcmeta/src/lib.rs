//! The svcmeta command-line tool as a library: catalog importers and the synthetic generator.
pub mod gen;
pub mod import;
