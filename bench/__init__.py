"""bisllm benchmarks: trace replay and policy comparison (``python -m bench.replay``)."""
