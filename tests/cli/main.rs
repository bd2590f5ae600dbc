//! The integration tests: every test runs the real binaries that cargo built.

mod common;
mod compact;
mod fixtures;
mod hostile;
#[cfg(feature = "kafka")]
mod kafka;
mod logd;
mod man;
mod names;
#[cfg(feature = "failpoints")]
mod powercut;
mod produce_consume;
mod recovery;
mod replay;
mod serve;
mod serve_load;
mod source;
mod store;
mod transform;
mod window;
