"""A seeded ShareGPT-like request mix: no data download, the same list for every configuration.

Prompt and output lengths follow log-normal laws fitted by eye to the ShareGPT V3 conversations
as vLLM's ``benchmark_serving`` samples them (long right tails; prompt median about 110 tokens,
output median about 140, mean about 210), clipped to the ranges the engines accept. One word is
one token for the synthetic engine, so a prompt of N tokens is N words from a fixed vocabulary.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = ["OUTPUT_LAW", "PROMPT_LAW", "WorkItem", "sharegpt_like"]

PROMPT_LAW = (math.log(110.0), 1.1)
"""(mu, sigma) of log(prompt tokens)."""
OUTPUT_LAW = (math.log(140.0), 0.9)
"""(mu, sigma) of log(output tokens)."""

_SYLLABLES = ("ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "zu", "an", "el", "or", "is")


@dataclass(frozen=True, slots=True)
class WorkItem:
    index: int
    prompt_tokens: int
    output_tokens: int
    prompt: str
    ignore_eos: bool = False
    """vLLM's ``ignore_eos``: a real model would otherwise stop at its end-of-sequence token
    and the output lengths would no longer follow the mix (vLLM's own benchmark sets it too)."""

    def payload(self) -> dict[str, object]:
        """The OpenAI chat request, streamed, asking for exactly ``output_tokens``."""
        out: dict[str, object] = {
            "model": "openpcc-model",
            "messages": [{"role": "user", "content": self.prompt}],
            "max_tokens": self.output_tokens,
            "stream": True,
        }
        if self.ignore_eos:
            out["ignore_eos"] = True
        return out


def _vocabulary(rng: random.Random, size: int = 512) -> list[str]:
    return ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(size)]


def sharegpt_like(
    n: int,
    seed: int,
    *,
    max_prompt: int = 2048,
    max_output: int = 1024,
    min_output: int = 4,
    ignore_eos: bool = False,
) -> list[WorkItem]:
    """``n`` requests; the same ``seed`` gives the same list on every machine."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    items: list[WorkItem] = []
    for i in range(n):
        p = round(rng.lognormvariate(*PROMPT_LAW))
        o = round(rng.lognormvariate(*OUTPUT_LAW))
        p = max(4, min(max_prompt, p))
        o = max(min_output, min(max_output, o))
        words = rng.choices(vocab, k=p)
        items.append(WorkItem(i, p, o, " ".join(words), ignore_eos))
    return items
