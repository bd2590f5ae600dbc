//! `transform`: see `kappa::cmd::transform`.

fn main() {
    kappa::cli::main(kappa::cmd::transform::command(), kappa::cmd::transform::run)
}
