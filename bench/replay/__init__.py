"""Trace replay through the bisllm router to a mocker fleet (``python -m bench.replay --help``).

Modules, in data-flow order: ``trace`` (Mooncake traces, scaling, hash-id → token
expansion) and ``synthetic`` (generated workloads) → ``fleet`` (mocker + router
processes) → ``client`` (open-loop streaming load generator) → ``report``
(percentiles, hit rates, imbalance; JSON + markdown) and ``plots`` (PNGs).
"""
