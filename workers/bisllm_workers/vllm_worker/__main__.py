"""`python -m bisllm_workers.vllm_worker ...` is `bisllm-worker ...` (no console script needed)."""

from bisllm_workers.vllm_worker import main

raise SystemExit(main())
