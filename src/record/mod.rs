//! The record stream that flows in pipes, and the codecs between it and bytes: envelopes
//! (`envelope`), fields pulled out of NDJSON objects without building them (`fields`), a validating scan of an object's members (`scan`), CSV
//! rows as typed JSON objects (`csvrow`), input lines to records (`ingest`), line splitting with bounded memory (`lines`),
//! kcat-like output templates (`template`) and timestamps (`time`).

pub mod csvrow;
pub mod envelope;
pub mod fields;
pub mod ingest;
pub mod json;
pub mod lines;
pub mod scan;
pub mod template;
pub mod time;
