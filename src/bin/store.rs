//! `store`: see `kappa::cmd::store`.

fn main() {
    kappa::cli::main(kappa::cmd::store::command(), kappa::cmd::store::run)
}
