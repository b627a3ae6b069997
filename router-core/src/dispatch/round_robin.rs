//! `round_robin`: the next worker in key order, ignoring load and cache. A baseline and
//! a fallback; with exclusions the cycle simply skips the excluded keys.

use rand::rngs::StdRng;

use super::{Candidate, CostBreakdown, Policy, RequestShape, Selection};

#[derive(Debug, Default)]
pub struct RoundRobin {
    next: usize,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn select(
        &mut self,
        _req: &RequestShape,
        candidates: &[Candidate],
        _rng: &mut StdRng,
    ) -> Selection {
        let index = self.next % candidates.len();
        self.next = self.next.wrapping_add(1);
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
    fn cycles() {
        let (mut p, mut rng) = (RoundRobin::default(), StdRng::seed_from_u64(0));
        let c = [cand(1, 0, 0, 0, 0), cand(2, 0, 0, 0, 0)];
        let picks: Vec<usize> = (0..4)
            .map(|_| p.select(&shape(1), &c, &mut rng).index)
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }
}
