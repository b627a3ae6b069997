//! `power_of_two`: sample two distinct workers at random and take the one with fewer
//! in-flight tokens (ties: the first sampled). Nearly as balanced as `least_tokens`
//! with O(1) work and no herding onto one momentarily idle worker.

use rand::rngs::StdRng;
use rand::Rng;

use super::{Candidate, CostBreakdown, Policy, RequestShape, Selection};

#[derive(Debug, Default)]
pub struct PowerOfTwo;

impl Policy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "power_of_two"
    }

    fn select(
        &mut self,
        _req: &RequestShape,
        candidates: &[Candidate],
        rng: &mut StdRng,
    ) -> Selection {
        let n = candidates.len();
        let index = if n == 1 {
            0
        } else {
            let a = rng.random_range(0..n);
            // A uniform second pick among the other n-1.
            let b = (a + 1 + rng.random_range(0..n - 1)) % n;
            if candidates[b].load.in_flight_tokens() < candidates[a].load.in_flight_tokens() {
                b
            } else {
                a
            }
        };
        Selection {
            index,
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
    fn never_picks_the_heaviest_of_two() {
        let mut rng = StdRng::seed_from_u64(0);
        let c = [cand(1, 0, 100, 0, 0), cand(2, 0, 0, 0, 0)];
        for _ in 0..20 {
            assert_eq!(PowerOfTwo.select(&shape(1), &c, &mut rng).index, 1);
        }
        assert_eq!(PowerOfTwo.select(&shape(1), &c[..1], &mut rng).index, 0);
    }
}
