//! What a thread rendered lately, given again while the inputs are the same.
//!
//! Under a flood, a 429's headers and body are the same bytes for a second at a time,
//! and a route's `RateLimit-Policy` changes only with its rules. Rendering them costs
//! more than comparing their inputs with those of a recent rendering, so each worker
//! thread keeps a few of its own (no lock, nothing shared).

/// Up to `N` renderings, each with the inputs it was made from; past `N`, the oldest is
/// replaced. Meant to sit in a `thread_local!`.
pub(super) struct Recent<K, V, const N: usize> {
    renderings: Vec<(K, V)>,
    /// The next to render over once `renderings` is full.
    oldest: usize,
}

impl<K, V: Clone, const N: usize> Recent<K, V, N> {
    /// Nothing kept yet.
    pub(super) const fn new() -> Self {
        Recent {
            renderings: Vec::new(),
            oldest: 0,
        }
    }

    /// A copy of the rendering whose inputs `same` accepts; else what `render` makes
    /// (its inputs and value), kept for next time.
    pub(super) fn get_or_render(
        &mut self,
        same: impl Fn(&K) -> bool,
        render: impl FnOnce() -> (K, V),
    ) -> V {
        if let Some((_, value)) = self.renderings.iter().find(|(inputs, _)| same(inputs)) {
            return value.clone();
        }
        let (inputs, value) = render();
        let kept = (inputs, value.clone());
        if self.renderings.len() < N {
            self.renderings.push(kept);
        } else if let Some(slot) = self.renderings.get_mut(self.oldest) {
            *slot = kept;
            self.oldest = (self.oldest + 1) % N;
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::Recent;

    #[test]
    fn a_rendering_is_given_again_only_for_the_same_inputs_and_the_oldest_goes_first() {
        let mut recent: Recent<u32, String, 2> = Recent::new();
        let mut rendered = Vec::new();
        let mut ask = |n: u32, recent: &mut Recent<u32, String, 2>| {
            recent.get_or_render(
                |kept| *kept == n,
                || {
                    rendered.push(n);
                    (n, n.to_string())
                },
            )
        };
        for n in [1, 2, 1, 2, 3, 2, 1, 3] {
            assert_eq!(ask(n, &mut recent), n.to_string());
        }
        // 3 replaces 1 (the oldest), 1 then replaces 2, and 3 is still kept.
        assert_eq!(rendered, [1, 2, 3, 1]);
    }
}
