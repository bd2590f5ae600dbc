//! One module per tool: its clap Command (`command()`), typed arguments and `run`.

pub mod consume;
pub mod logd;
pub mod produce;
pub mod replay;
pub mod store;
pub mod transform;
pub mod window;
