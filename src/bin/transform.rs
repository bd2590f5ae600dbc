//! `transform`: see `kappa::cmd::transform`.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    kappa::cli::main(kappa::cmd::transform::command(), kappa::cmd::transform::run)
}
