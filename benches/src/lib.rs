//! Benchmarks live in `benches/`: `cargo bench -p rampart-benches`.

/// Runs a chain whose plugins all decide locally: its future is ready on the first poll.
/// `None` when it is not (a plugin waits on a shared store, which benchmarks do not use).
pub fn evaluate_now(
    chain: &rampart_plugins::Chain,
    view: &rampart_plugins::RequestView<'_>,
) -> Option<Option<(&'static str, rampart_plugins::Deny)>> {
    let future = std::pin::pin!(chain.evaluate(view, rampart_plugins::Stage::All, |_| {}));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(future, &mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
