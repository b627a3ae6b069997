//! `least_tokens`: the worker with the fewest in-flight tokens (uncached prefill +
//! decode sequence tokens, the autoscaling signal), ties broken at random. Load-aware,
//! cache-blind.

use rand::rngs::StdRng;

use super::{argmin_random_ties, Candidate, CostBreakdown, Policy, RequestShape, Selection};

#[derive(Debug, Default)]
pub struct LeastTokens;

impl Policy for LeastTokens {
    fn name(&self) -> &'static str {
        "least_tokens"
    }

    fn select(
        &mut self,
        _req: &RequestShape,
        candidates: &[Candidate],
        rng: &mut StdRng,
    ) -> Selection {
        let index = argmin_random_ties(
            candidates.len(),
            |i| candidates[i].load.in_flight_tokens(),
            rng,
        );
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
    fn picks_the_least_loaded() {
        let mut rng = StdRng::seed_from_u64(0);
        let c = [
            cand(1, 9, 100, 0, 0),
            cand(2, 0, 10, 20, 0),
            cand(3, 0, 0, 50, 0),
        ];
        assert_eq!(LeastTokens.select(&shape(1), &c, &mut rng).index, 1);
    }
}
