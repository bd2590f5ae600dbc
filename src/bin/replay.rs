//! `replay`: see `kappa::cmd::replay`.

fn main() {
    kappa::cli::main(kappa::cmd::replay::command(), kappa::cmd::replay::run)
}
