//! Work spread over a few scoped threads, with the results in the items' order.

/// `f` of every item, on at most `threads` threads (item `i` on thread `i % threads`), in
/// the items' order; `None` for the items of a thread that panicked.
pub fn striped<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<Option<R>> {
    let threads = threads.clamp(1, items.len().max(1));
    let mut out: Vec<Option<R>> = items.iter().map(|_| None).collect();
    std::thread::scope(|s| {
        let f = &f;
        let lanes: Vec<_> = (0..threads)
            .map(|lane| {
                s.spawn(move || {
                    items
                        .iter()
                        .enumerate()
                        .skip(lane)
                        .step_by(threads)
                        .map(|(i, item)| (i, f(item)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for lane in lanes {
            match lane.join() {
                Ok(results) => {
                    for (i, r) in results {
                        out[i] = Some(r);
                    }
                }
                Err(_) => tracing::error!("a worker thread panicked"),
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_come_back_in_order() {
        let items: Vec<u32> = (0..100).collect();
        let out = super::striped(&items, 7, |x| x * 2);
        assert_eq!(out, items.iter().map(|x| Some(x * 2)).collect::<Vec<_>>());
        assert!(super::striped(&[] as &[u32], 4, |x| *x).is_empty());
    }
}
