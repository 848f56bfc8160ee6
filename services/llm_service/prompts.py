"""Every system prompt of the LLM service, and the builders that turn requests into chat messages.

Kept in one module so a reviewer sees at a glance what the model is told on each route, and so tests can
check the builders directly (coverage rules for covered shorts/scenes only, persona traits always).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.llm_service.backends.base import ChatMessage
from shared.models import ChatTurn, CoverageReason, Features, ReplyRequest
from shared.persona import describe_persona, persona_notes
from shared.policy import COVERAGE_PHRASE
from shared.roles import CHAT_KIND_ROLE, ChatKind, chat_policy
from shared.styles import style_phrase

ExpandKind = ChatKind
# Which expansions may be covered (coverage rules and clause) when the interface asks for it: declared per
# role in shared/roles.py. The others (1:1) have no moderation beyond the interface's hard block.
MODERATED_KINDS: frozenset[str] = frozenset(k for k in CHAT_KIND_ROLE if chat_policy(k).moderated_expansion)

_EMPTY_PHRASES = re.compile(r"\s*,(?:\s*,)+")

# {words}: the kind's target (LLM_EXPAND_WORDS_*). The image model reads up to 512 tokens, far beyond
# CLIP's 77, so a rich description is used, not cut; the service still bounds it (token_budget.py).
EXPAND_SYSTEM = (
    "You write prompts for a text-to-image model. From the chat below, describe the ONE picture the user "
    "wants now: setting, action, pose, clothing, lighting, camera framing and mood, with concrete detail "
    "about materials, colours, background and light. Write a single paragraph of comma-separated visual "
    "phrases, about {words} words, in English. No preamble, no quotes, no lists, no explanations. The "
    "character's appearance is fixed and given below: keep every trait exactly as given (hair colour and "
    "style, eye colour, skin tone, age range, gender presentation, facial hair, glasses, accessories) and "
    "never contradict or change them."
)

# The service appends the phrase itself (compose_expanded_prompt), so the style survives any model output;
# telling the model lets it describe light, colour and rendering to match instead of contradicting it.
STYLE_INSTRUCTION = "Render the whole picture in this visual style, and describe it to match: {phrase}."

# How each kind frames its picture (not a style preset: those are shared/styles.py).
KIND_FRAMING: dict[str, str] = {
    "1to1": "The picture is a personal photo shared in a private one-to-one chat.",
    "shorts": "The picture is a vertical frame for a short video feed: dynamic, eye-catching composition.",
    "scenes": "The picture is a wide cinematic scene with a clear setting around the character.",
}

# The product's definition of a covered picture (docs/MODERATION.md): the mood is kept and
# only exposure is hidden, so the rules never ask for more clothing than its own allowed examples wear.
COVERAGE_RULES = (
    "Coverage rules: the picture appears in a public feed, where intimate areas are always covered. Keep "
    "the mood the user asked for and cover the body with clothing, fabric, occlusion, pose or camera "
    "framing. Allowed: lingerie, swimwear, silk sheets, sheer or translucent curtains, and implied nudity "
    'when fully occluded, for example "draped in silk sheets", "wearing lace lingerie", "positioned behind '
    'translucent curtains". Never describe exposed genitals, exposed nipples or a sexual act: describe a '
    "covered version of the moment instead. Never depict a minor."
)
# Why this request is covered, told before the rules so the model knows what to change.
COVERAGE_REASONS: dict[CoverageReason, str] = {
    "suggestive": "The request is suggestive: keep it alluring and keep every intimate area covered.",
    "explicit": (
        "The request asks for nudity or a sexual act: do not refuse it and do not show it; picture the "
        "same characters and setting in a covered moment that only implies it, such as an embrace under "
        "silk sheets."
    ),
}

# Appended by the service itself to every covered prompt: the second line of defence after the rules above,
# in the one wording of coverage that the word rules use too.
COVERAGE_CLAUSE = f"Coverage: {COVERAGE_PHRASE}."

SHORTEN_SYSTEM = (
    "Shorten the user's message to at most {max_words} words. Keep its intent, its subject and every "
    "concrete detail that matters for a picture, and reuse the user's own words. Answer with the "
    "shortened message only."
)

CAPTION_SYSTEM = (
    "Write one caption of {min_words} to {max_words} words for the picture described by the user. The "
    "caption must always be safe for work: no sexual, explicit, violent or hateful words, even if the "
    "description contains them. Answer with the caption only: no quotes, no hashtags, no emojis."
)

REPLY_SYSTEM = (
    "You are the character described below, chatting with the user in a private one-to-one conversation. "
    "Stay in character, answer the user's last message in a warm, natural tone in one to three sentences, "
    "and do not describe yourself as an AI or a language model."
)


def character_descriptor(persona: Features | None) -> str:
    descriptor = describe_persona(persona)
    return f"the same character: {descriptor}" if descriptor else ""


def _history_block(history: Sequence[ChatTurn]) -> str:
    return "\n".join(f"{turn.role}: {turn.content}" for turn in history)


def applied_coverage(kind: ExpandKind, coverage: CoverageReason | None) -> CoverageReason | None:
    """The coverage an expansion gets: the interface's decision on a moderated kind, none on 1:1 (where a
    stray ``coverage`` is ignored) and none for a neutral message."""
    return coverage if kind in MODERATED_KINDS else None


def expand_system_prompt(
    kind: ExpandKind,
    *,
    words: int,
    style: str | None = None,
    coverage: CoverageReason | None = None,
) -> str:
    parts = [EXPAND_SYSTEM.format(words=words), KIND_FRAMING[kind]]
    if phrase := style_phrase(style):
        parts.append(STYLE_INSTRUCTION.format(phrase=phrase))
    if reason := applied_coverage(kind, coverage):
        parts.append(f"{COVERAGE_REASONS[reason]} {COVERAGE_RULES}")
    return "\n\n".join(parts)


def build_expand_messages(
    kind: ExpandKind,
    message: str,
    history: Sequence[ChatTurn],
    persona: Features | None,
    *,
    words: int,
    style: str | None = None,
    coverage: CoverageReason | None = None,
) -> list[ChatMessage]:
    descriptor = character_descriptor(persona)
    sections = []
    if history:
        sections.append("Conversation so far:\n" + _history_block(history))
    sections.append(f"Latest message: {message}")
    sections.append(f"Character appearance (keep exactly): {descriptor or 'not specified'}")
    if notes := persona_notes(persona):
        sections.append(f"Character notes: {notes}")
    sections.append("Write the image prompt now.")
    system = expand_system_prompt(kind, words=words, style=style, coverage=coverage)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "\n\n".join(sections)},
    ]


def build_shorten_messages(message: str, max_words: int) -> list[ChatMessage]:
    return [
        {"role": "system", "content": SHORTEN_SYSTEM.format(max_words=max_words)},
        {"role": "user", "content": message},
    ]


def build_caption_messages(
    prompt: str, message: str | None, *, min_words: int, max_words: int
) -> list[ChatMessage]:
    user = f"Picture: {prompt}"
    if message:
        user += f"\n\nThe user asked: {message}"
    return [
        {"role": "system", "content": CAPTION_SYSTEM.format(min_words=min_words, max_words=max_words)},
        {"role": "user", "content": user},
    ]


def reply_system_prompt(
    persona: Features | None,
    *,
    name: str | None = None,
    personality: str | None = None,
    speaking_style: str | None = None,
) -> str:
    """The character the reply speaks as: one descriptor for its looks (shared.persona, as the image prompts
    use), then who it is, when the persona record says."""
    parts = [REPLY_SYSTEM]
    if name:
        parts.append(f"Your name: {name}.")
    if descriptor := describe_persona(persona):
        parts.append(f"Your appearance: {descriptor}.")
    if notes := persona_notes(persona):
        parts.append(f"About you: {notes}")
    if personality:
        parts.append(f"Your personality: {personality}")
    if speaking_style:
        parts.append(f"How you speak: {speaking_style}")
    return "\n\n".join(parts)


def build_reply_messages(req: ReplyRequest, history: Sequence[ChatTurn]) -> list[ChatMessage]:
    system = reply_system_prompt(
        req.persona, name=req.name, personality=req.personality, speaking_style=req.speaking_style
    )
    messages: list[ChatMessage] = [{"role": "system", "content": system}]
    messages.extend({"role": turn.role, "content": turn.content} for turn in history)
    messages.append({"role": "user", "content": req.message})
    return messages


def compose_expanded_prompt(
    kind: ExpandKind,
    descriptor: str,
    scene: str,
    *,
    style: str | None = None,
    coverage: CoverageReason | None = None,
) -> str:
    """Final prompt = fixed character descriptor + the scene + the style phrase + (covered expansions only)
    the coverage clause.

    Built here, not left to the model, so the persona, the style and the coverage clause survive any model
    output. Nothing is cut here: fitting the budget is token_budget.py's, and it trims the scene only.
    """
    phrase = style_phrase(style)
    head = f"{descriptor[0].upper()}{descriptor[1:]}." if descriptor else ""
    body = ", ".join(part for part in (scene_without_style(scene, phrase), phrase) if part)
    tail = COVERAGE_CLAUSE if applied_coverage(kind, coverage) else ""
    return " ".join(part for part in (head, f"{body}." if body else "", tail) if part)


def scene_without_style(scene: str, phrase: str | None) -> str:
    """The scene as a bare phrase list: no verbatim copy of the style phrase (it is appended once, at the
    end), no trailing full stop or separator."""
    if phrase:
        scene = _EMPTY_PHRASES.sub(",", re.sub(re.escape(phrase), ",", scene, flags=re.IGNORECASE))
    return scene.strip().strip(",;:.").strip()
