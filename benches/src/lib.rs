//! Benchmarks live in `benches/`: `cargo bench -p rampart-benches`.

/// Runs a chain whose plugins all decide locally: its future is ready on the first poll.
/// `None` when it is not (a plugin waits on a shared store, which benchmarks do not use).
pub fn evaluate_now(
    chain: &rampart_plugins::Chain,
    view: &rampart_plugins::RequestView<'_>,
) -> Option<Option<(&'static str, rampart_plugins::Deny)>> {
    rampart_plugins::now_or_never(chain.evaluate(view, rampart_plugins::Stage::All, |_| {}))
        .map(|judgement| judgement.denied)
}

pub mod agent;
