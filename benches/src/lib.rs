//! Benchmarks live in `benches/`: `cargo bench -p rampart-benches`.
