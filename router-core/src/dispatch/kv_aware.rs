/*!
`kv_aware`: trade prefix-cache hits against load, in units of KV blocks.

# Algorithm

For a prompt of `P` tokens (block size `B`) and each eligible worker `w` with a
prefix overlap of `o_w` full blocks (from the router's index):

```text
request_blocks    = ceil(P / B)                     the prompt's blocks, trailing partial included
prefill_blocks(w) = queued_prefill_tokens(w) / B    uncached prompt work already waiting on w
                  + (request_blocks - o_w)          this prompt's uncached blocks on w
decode_blocks(w)  = active_blocks(w)                KV held by w's active requests
                  + ceil((P + E) / B)               this request's KV once it decodes
cost(w)           = overlap_weight * prefill_blocks(w) + decode_blocks(w)      lower wins
```

Prefill work is what a cache hit saves (time to first token); decode blocks are the KV
the worker will hold and read every step (inter-token latency, memory pressure). A
request still in prefill counts in `active_blocks` too: it will hold the same KV while
it decodes, so it is future decode load. The trailing partial block always counts as
prefill because engines never cache partial blocks.

With `temperature == 0` the minimum cost wins; exact ties are broken uniformly at
random with the core's seeded RNG, so identical idle workers share new prefixes instead
of the first one taking them all. With `temperature > 0` the choice is sampled from

```text
p(w) ∝ exp(-(cost(w) / max_w cost(w)) / temperature)
```

Normalising by the largest cost makes the temperature scale-free (the same value
behaves alike for 1K- and 100K-token prompts); costs are shifted by their minimum
before exponentiation so the weights never underflow to all-zero.

# Parameters

* `overlap_weight` (≥ 0, default 1.0): how many decode blocks one prefill block is
  worth. Larger values chase cache hits harder (better TTFT, more load skew); 0
  ignores the cache and balances KV only.
* `temperature` (≥ 0, default 0.0): softmax temperature over normalised costs. 0 is
  greedy; around 0.1–1 spreads hot prefixes over near-equal workers, which keeps one
  worker from owning a popular system prompt alone.
* `E` = the request's `expected_output_tokens` (0 when unknown).
*/

use rand::rngs::StdRng;
use rand::Rng;

use super::{argmin_random_ties, Candidate, CostBreakdown, Policy, RequestShape, Selection};
use crate::protocols::{CoreError, CoreResult};

#[derive(Debug)]
pub struct KvAware {
    overlap_weight: f64,
    temperature: f64,
    costs: Vec<CostBreakdown>,
    weights: Vec<f64>,
}

impl KvAware {
    pub fn new(overlap_weight: f64, temperature: f64) -> CoreResult<Self> {
        if !(overlap_weight.is_finite() && overlap_weight >= 0.0) {
            return Err(CoreError::InvalidArgument(format!(
                "overlap_weight must be a finite number >= 0, got {overlap_weight}"
            )));
        }
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(CoreError::InvalidArgument(format!(
                "temperature must be a finite number >= 0, got {temperature}"
            )));
        }
        Ok(KvAware {
            overlap_weight,
            temperature,
            costs: Vec::new(),
            weights: Vec::new(),
        })
    }

    /// The cost terms of one worker (see the module docs).
    pub fn cost(&self, req: &RequestShape, c: &Candidate) -> CostBreakdown {
        let bs = req.block_size as f64;
        let request_blocks = req.prompt_tokens.div_ceil(req.block_size);
        let uncached = request_blocks.saturating_sub(c.overlap_blocks as usize);
        let prefill_blocks = c.load.prefill_tokens as f64 / bs + uncached as f64;
        let own = (req.prompt_tokens + req.expected_output_tokens).div_ceil(req.block_size);
        let decode_blocks = (c.load.active_blocks + own as u64) as f64;
        CostBreakdown {
            cost: self.overlap_weight * prefill_blocks + decode_blocks,
            prefill_blocks,
            decode_blocks,
        }
    }
}

impl Policy for KvAware {
    fn name(&self) -> &'static str {
        "kv_aware"
    }

    fn select(
        &mut self,
        req: &RequestShape,
        candidates: &[Candidate],
        rng: &mut StdRng,
    ) -> Selection {
        let mut costs = std::mem::take(&mut self.costs);
        costs.clear();
        costs.extend(candidates.iter().map(|c| self.cost(req, c)));
        let index = if self.temperature == 0.0 || candidates.len() == 1 {
            argmin_random_ties(costs.len(), |i| costs[i].cost, rng)
        } else {
            let (mut min, mut max) = (f64::INFINITY, 0.0f64);
            for c in &costs {
                min = min.min(c.cost);
                max = max.max(c.cost);
            }
            let scale = if max > 0.0 { max } else { 1.0 };
            self.weights.clear();
            let mut total = 0.0;
            for c in &costs {
                let w = (-(c.cost - min) / scale / self.temperature).exp();
                total += w;
                self.weights.push(w);
            }
            let mut x = rng.random::<f64>() * total;
            let mut pick = self.weights.len() - 1;
            for (i, w) in self.weights.iter().enumerate() {
                if x < *w {
                    pick = i;
                    break;
                }
                x -= w;
            }
            pick
        };
        let cost = costs[index];
        self.costs = costs;
        Selection { index, cost }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{cand, shape};
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn cost_terms_follow_the_formula() {
        let p = KvAware::new(2.0, 0.0).unwrap();
        // 40 tokens → 3 blocks (one partial); 1 cached; 32 queued prefill tokens; 5 active.
        let c = cand(1, 1, 32, 0, 5);
        let req = RequestShape {
            prompt_tokens: 40,
            block_size: 16,
            expected_output_tokens: 24,
        };
        let k = p.cost(&req, &c);
        assert_eq!(k.prefill_blocks, 2.0 + 2.0);
        assert_eq!(k.decode_blocks, 5.0 + 4.0);
        assert_eq!(k.cost, 2.0 * 4.0 + 9.0);
    }

    #[test]
    fn overlap_wins_until_load_outweighs_it() {
        let mut p = KvAware::new(1.0, 0.0).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        let c = [cand(1, 0, 0, 0, 0), cand(2, 60, 0, 0, 0)];
        assert_eq!(p.select(&shape(1024), &c, &mut rng).index, 1);
        let c = [cand(1, 0, 0, 0, 0), cand(2, 60, 0, 0, 200)];
        assert_eq!(p.select(&shape(1024), &c, &mut rng).index, 0);
    }

    #[test]
    fn temperature_samples_and_is_seedable() {
        let mut p = KvAware::new(1.0, 1.0).unwrap();
        let c = [
            cand(1, 0, 0, 0, 0),
            cand(2, 10, 0, 0, 0),
            cand(3, 0, 0, 0, 30),
        ];
        let run = |p: &mut KvAware, seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200)
                .map(|_| p.select(&shape(256), &c, &mut rng).index)
                .collect::<Vec<_>>()
        };
        let a = run(&mut p, 7);
        assert_eq!(a, run(&mut p, 7));
        let mut counts = [0; 3];
        for i in &a {
            counts[*i] += 1;
        }
        // The cheapest wins most often, but not always.
        assert!(
            counts[1] > counts[0] && counts[0] > 0 && counts[1] < 200,
            "{counts:?}"
        );
        assert!(KvAware::new(-1.0, 0.0).is_err());
        assert!(KvAware::new(1.0, f64::NAN).is_err());
    }
}
