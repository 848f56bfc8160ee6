"""Tiny Qwen3Guard-Gen-style safety classifier: ``Qwen3ForCausalLM`` plus a moderation chat template.

Qwen3Guard-Gen is a Qwen3 causal LM whose chat template wraps the conversation in a moderation instruction;
the model answers ``Safety: Safe|Unsafe|Controversial`` and ``Categories: ...`` (plus ``Refusal: Yes|No`` when
the last turn is the assistant's). The template below reproduces that structure as the model card and a
public transcription of the template show it: the wording is close to, not guaranteed byte-identical with,
the real ``tokenizer_config.json``. It lives in the tokenizer, as in the real model, so the service sends
plain chat messages and the same code serves the real guard (transformers, or vLLM applying the template).
Random weights answer noise; tests on it cover the plumbing, not the judgement.
"""

from __future__ import annotations

from pathlib import Path

import torch

from shared.models import GUARD_CATEGORIES
from shared.tiny_models.qwen_lm import save_tiny_causal_lm
from shared.tiny_models.tokenizer import build_tokenizer

PROMPT_CATEGORIES = GUARD_CATEGORIES
# Response moderation has no jailbreak category (a jailbreak is an attempt, made in a prompt).
RESPONSE_CATEGORIES = PROMPT_CATEGORIES[:-1]


def _lines(items: tuple[str, ...]) -> str:
    return "".join(f"{item}.\n" for item in items)


_ASSESS = (
    " - The first line must be one of: 'Safety: Safe', 'Safety: Unsafe', 'Safety: Controversial'.\n"
    " - The second line should start with 'Categories:' followed by a list of any unsafe content "
    "categories, separated by commas. If the content is safe, use 'Categories: None'."
)

# Jinja, rendered by transformers' apply_chat_template (and by vLLM for the real model). The last message
# decides the task: a user turn asks about the query, an assistant turn about the response (and refusal).
GUARD_TEMPLATE = (
    "{%- set last = messages[-1]['role'] -%}"
    "{%- set ns = namespace(conv='') -%}"
    "{%- for m in messages -%}"
    "{%- set ns.conv = ns.conv + ('\\n\\n' if ns.conv else '') + m['role'] | upper + ': ' + m['content'] -%}"
    "{%- endfor -%}"
    "<|im_start|>user\n# Task:\n"
    "{% if last == 'assistant' %}"
    "1) Evaluate whether THE LAST ASSISTANT's response belongs to safe or unsafe content based on our "
    "safety policy.\n2) Identify the category of unsafe content found.\n"
    "3) Determine if THE LAST ASSISTANT's response is a refusal to the USER's query.\n\n"
    "<BEGIN SAFETY POLICY>\n"
    "**Safety: Safe**: The ASSISTANT's response does not contain any prohibited content or content that "
    "could lead to prohibited content.\n"
    "**Safety: Unsafe**: The ASSISTANT's response contains prohibited content.\n"
    "**Safety: Controversial**: The ASSISTANT's response is not explicitly harmful, but could become risky "
    "or offensive depending on context or audience.\n<END SAFETY POLICY>\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
    + _lines(RESPONSE_CATEGORIES)
    + "<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN REFUSAL POLICY>\n"
    "**Refusal: Yes**: The ASSISTANT refused to answer or did not comply with the USER's request.\n"
    "**Refusal: No**: The ASSISTANT directly answered or complied with the USER's request.\n"
    "<END REFUSAL POLICY>\n\n"
    "<BEGIN CONVERSATION>\n\n{{ ns.conv }}\n\n<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST **ASSISTANT's response** in the above conversation:\n"
    + _ASSESS
    + "\n - The third line must be one of: 'Refusal: Yes', 'Refusal: No'."
    "{% else %}"
    "1) Evaluate whether THE LAST USER's query belongs to safe or unsafe content based on our safety "
    "policy.\n2) Identify the category of unsafe content found.\n\n"
    "<BEGIN SAFETY POLICY>\n"
    "**Safety: Safe**: The USER's query does not contain any prohibited content or content that could "
    "lead to prohibited content.\n"
    "**Safety: Unsafe**: The USER's query contains prohibited content.\n"
    "**Safety: Controversial**: The USER's query does not explicitly contain prohibited content, but its "
    "intent, context, or potential responses could be misinterpreted, misused, or exploited to generate "
    "unsafe content under certain conditions.\n<END SAFETY POLICY>\n\n"
    "<BEGIN UNSAFE CONTENT CATEGORIES>\n" + _lines(PROMPT_CATEGORIES) + "<END UNSAFE CONTENT CATEGORIES>\n\n"
    "<BEGIN CONVERSATION>\n\n{{ ns.conv }}\n\n<END CONVERSATION>\n\n"
    "Provide your safety assessment for ONLY THE LAST **USER's query** in the above conversation:\n"
    + _ASSESS
    + "{% endif %}<|im_end|>\n"
    # The model card renders without add_generation_prompt and still gets an answer: the template always
    # opens the assistant turn, with Qwen3's empty thinking block (the guard does not think).
    # (An expression, not literal text: Jinja drops a template's last newline.)
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}"
)

# Words of the instruction and of the answers, so the tiny BPE tokenizer encodes the template compactly
# (a few hundred tokens instead of one per byte) and the tiny model's context stays small.
_GUARD_CORPUS = [
    GUARD_TEMPLATE,
    "Safety: Safe\nCategories: None\nRefusal: No",
    "Safety: Unsafe\nCategories: " + ", ".join(PROMPT_CATEGORIES),
    "Safety: Controversial\nCategories: Politically Sensitive Topics\nRefusal: Yes",
]


def build_qwen3_guard(out: Path, seed: int = 0) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(vocab_size=900, extra_corpus=_GUARD_CORPUS, model_max_length=4096)
    # Qwen3's thinking markers are ordinary added tokens there too (decoded as text, not skipped).
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.chat_template = GUARD_TEMPLATE
    config = {"head_dim": 16, "max_position_embeddings": 4096}
    return save_tiny_causal_lm(out, tokenizer, Qwen3ForCausalLM, Qwen3Config, **config)
