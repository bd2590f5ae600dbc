//! `consume`: see `kappa::cmd::consume`.

fn main() {
    kappa::cli::main(kappa::cmd::consume::command(), kappa::cmd::consume::run)
}
