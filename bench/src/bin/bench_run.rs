//! `bench-run`: the side-by-side benchmark runner; `bench/run` builds everything and calls it.
//! See `bench::runner`.

fn main() {
    std::process::exit(bench::runner::main());
}
