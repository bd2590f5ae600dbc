//! `window`: see `kappa::cmd::window`.

fn main() {
    kappa::cli::main(kappa::cmd::window::command(), kappa::cmd::window::run)
}
