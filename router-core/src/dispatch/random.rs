//! `random`: uniformly at random (seeded). A baseline that spreads load evenly in
//! expectation but ignores both load and cache.

use rand::rngs::StdRng;
use rand::Rng;

use super::{Candidate, CostBreakdown, Policy, RequestShape, Selection};

#[derive(Debug, Default)]
pub struct Random;

impl Policy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn select(
        &mut self,
        _req: &RequestShape,
        candidates: &[Candidate],
        rng: &mut StdRng,
    ) -> Selection {
        Selection {
            index: rng.random_range(0..candidates.len()),
            cost: CostBreakdown::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{cand, shape};
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn seeded_runs_repeat() {
        let c: Vec<_> = (0..8).map(|i| cand(i, 0, 0, 0, 0)).collect();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..16)
                .map(|_| Random.select(&shape(1), &c, &mut rng).index)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
