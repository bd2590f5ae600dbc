//! `logd`: see `kappa::cmd::logd`.

fn main() {
    kappa::cli::main(kappa::cmd::logd::command(), kappa::cmd::logd::run)
}
