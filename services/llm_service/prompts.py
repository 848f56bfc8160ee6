"""Every system prompt of the LLM service, and the builders that turn requests into chat messages.

Kept in one module so a reviewer sees at a glance what the model is told on each route, and so tests can
check the builders directly (moderation rules for shorts/scenes only, persona traits always).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.llm_service.backends.base import ChatMessage
from shared.models import ChatTurn, Features
from shared.persona import describe_persona, persona_notes
from shared.roles import CHAT_KIND_ROLE, ChatKind, chat_policy
from shared.styles import style_phrase

ExpandKind = ChatKind
# Which expansions get coverage rules and the safety clause: declared per role in shared/roles.py.
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

MODERATION_RULES = (
    "Content rules: the picture appears in a moderated public feed. If the request is suggestive or sexual, "
    "keep the character fully clothed and keep it tasteful with clothing, pose, framing or occlusion. Never "
    "describe nudity, exposed intimate body parts or sexual acts. Never depict a minor in any suggestive way."
)

# Appended by the service itself to every moderated prompt: the second line of defence after the rules above.
SAFETY_CLAUSE = "Safety: fully clothed, modest clothing, no nudity, safe for work."

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


def expand_system_prompt(kind: ExpandKind, *, words: int, style: str | None = None) -> str:
    parts = [EXPAND_SYSTEM.format(words=words), KIND_FRAMING[kind]]
    if phrase := style_phrase(style):
        parts.append(STYLE_INSTRUCTION.format(phrase=phrase))
    if kind in MODERATED_KINDS:
        parts.append(MODERATION_RULES)
    return "\n\n".join(parts)


def build_expand_messages(
    kind: ExpandKind,
    message: str,
    history: Sequence[ChatTurn],
    persona: Features | None,
    *,
    words: int,
    style: str | None = None,
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
    return [
        {"role": "system", "content": expand_system_prompt(kind, words=words, style=style)},
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


def reply_system_prompt(persona: Features) -> str:
    parts = [REPLY_SYSTEM]
    if descriptor := describe_persona(persona):
        parts.append(f"Your appearance: {descriptor}.")
    if notes := persona_notes(persona):
        parts.append(f"About you: {notes}")
    return "\n\n".join(parts)


def build_reply_messages(persona: Features, message: str, history: Sequence[ChatTurn]) -> list[ChatMessage]:
    messages: list[ChatMessage] = [{"role": "system", "content": reply_system_prompt(persona)}]
    messages.extend({"role": turn.role, "content": turn.content} for turn in history)
    messages.append({"role": "user", "content": message})
    return messages


def compose_expanded_prompt(
    kind: ExpandKind, descriptor: str, scene: str, *, style: str | None = None
) -> str:
    """Final prompt = fixed character descriptor + the scene + the style phrase + (moderated kinds) the
    safety clause.

    Built here, not left to the model, so the persona, the style and the safety clause survive any model
    output. Nothing is cut here: fitting the budget is token_budget.py's, and it trims the scene only.
    """
    phrase = style_phrase(style)
    head = f"{descriptor[0].upper()}{descriptor[1:]}." if descriptor else ""
    body = ", ".join(part for part in (scene_without_style(scene, phrase), phrase) if part)
    tail = SAFETY_CLAUSE if kind in MODERATED_KINDS else ""
    return " ".join(part for part in (head, f"{body}." if body else "", tail) if part)


def scene_without_style(scene: str, phrase: str | None) -> str:
    """The scene as a bare phrase list: no verbatim copy of the style phrase (it is appended once, at the
    end), no trailing full stop or separator."""
    if phrase:
        scene = _EMPTY_PHRASES.sub(",", re.sub(re.escape(phrase), ",", scene, flags=re.IGNORECASE))
    return scene.strip().strip(",;:.").strip()
