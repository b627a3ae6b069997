"""`python -m bisllm_workers.vllm_worker._check JSON`: run `check_with_vllm` and exit.

Internal to `check_in_subprocess` (config.py): the JSON is `{"extra_args": [...], "argv": [...]}`;
exit status 0 means vLLM accepts the arguments, 2 means the last stderr line says why not.
"""

from __future__ import annotations

import json
import sys

from bisllm_workers.vllm_worker.config import WorkerConfigError, check_with_vllm


def main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    try:
        check_with_vllm(request["extra_args"], request["argv"])
    except WorkerConfigError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
