"""FAKE vLLM — for tests. Stands in for the ``vllm`` executable; production never uses it.

``vllm serve MODEL --host H --port P --served-model-name NAME [more vllm flags]``: appends its
argv (as the supervisor passed it, ``vllm`` first) as one JSON line to ``$FAKE_VLLM_ARGV``, then
serves the FAKE ENGINE (tests/fakes/engine.py: OpenAI streaming, one word per token) on H:P.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "fakes" / "engine.py"


def main(argv: list[str]) -> None:
    if not argv or argv[0] != "serve" or len(argv) < 2:
        sys.exit("fake vllm: usage: vllm serve MODEL [options]")
    record = os.environ.get("FAKE_VLLM_ARGV")
    if record:
        with open(record, "a") as f:
            f.write(json.dumps(["vllm", *argv]) + "\n")
    opts = {"--host": "127.0.0.1", "--port": "", "--served-model-name": argv[1]}
    for i, a in enumerate(argv):
        if a in opts and i + 1 < len(argv):
            opts[a] = argv[i + 1]
    spec = importlib.util.spec_from_file_location("fake_engine", ENGINE)
    assert spec is not None and spec.loader is not None
    engine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(engine)
    engine.main([f"{k}={v}" for k, v in opts.items()])


if __name__ == "__main__":
    main(sys.argv[1:])
