//! `produce`: see `kappa::cmd::produce`.

fn main() {
    kappa::cli::main(kappa::cmd::produce::command(), kappa::cmd::produce::run)
}
