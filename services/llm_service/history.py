"""Chat history bounded by a token budget, counted with the model's own tokenizer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from shared.models import ChatTurn

# ChatML wraps each turn in "<|im_start|>role\n...<|im_end|>\n": a few tokens beyond the content itself.
TURN_OVERHEAD_TOKENS = 4


def bound_history(
    history: Sequence[ChatTurn], budget: int, count_tokens: Callable[[str], int]
) -> list[ChatTurn]:
    """The newest turns whose tokens fit ``budget``, oldest first. Stops at the first turn that does not fit,
    so the kept history is always a contiguous tail (never a conversation with holes in it)."""
    kept: list[ChatTurn] = []
    used = 0
    for turn in reversed(history):
        cost = count_tokens(f"{turn.role}: {turn.content}") + TURN_OVERHEAD_TOKENS
        if used + cost > budget:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    return kept
