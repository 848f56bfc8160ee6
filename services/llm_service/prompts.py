"""Every system prompt of the LLM service, and the builders that turn requests into chat messages.

Kept in one module so a reviewer sees at a glance what the model is told on each route, and so tests can
check the builders directly (moderation rules for shorts/scenes only, persona traits always).
"""

from __future__ import annotations

from collections.abc import Sequence

from services.llm_service.backends.base import ChatMessage
from services.llm_service.cleaning import truncate_chars
from shared.models import ChatTurn, Features
from shared.persona import describe_persona, persona_notes
from shared.roles import CHAT_KIND_ROLE, ChatKind, chat_policy

ExpandKind = ChatKind
# Which expansions get coverage rules and the safety clause: declared per role in shared/roles.py.
MODERATED_KINDS: frozenset[str] = frozenset(k for k in CHAT_KIND_ROLE if chat_policy(k).moderated_expansion)

EXPAND_SYSTEM = (
    "You write prompts for a text-to-image model. From the chat below, describe the ONE picture the user "
    "wants now: setting, action, pose, clothing, lighting, camera framing and mood. Write a single paragraph "
    "of comma-separated visual phrases, at most 70 words, in English. No preamble, no quotes, no lists, no "
    "explanations. The character's appearance is fixed and given below: keep every trait exactly as given "
    "(hair colour and style, eye colour, skin tone, age range, gender presentation, facial hair, glasses, "
    "accessories) and never contradict or change them."
)

KIND_STYLE: dict[str, str] = {
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


def expand_system_prompt(kind: ExpandKind) -> str:
    parts = [EXPAND_SYSTEM, KIND_STYLE[kind]]
    if kind in MODERATED_KINDS:
        parts.append(MODERATION_RULES)
    return "\n\n".join(parts)


def build_expand_messages(
    kind: ExpandKind, message: str, history: Sequence[ChatTurn], persona: Features | None
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
        {"role": "system", "content": expand_system_prompt(kind)},
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


def compose_expanded_prompt(kind: ExpandKind, descriptor: str, scene: str, *, max_chars: int) -> str:
    """Final prompt = fixed character descriptor + the scene + (moderated kinds) the safety clause.

    Built here, not left to the model, so the persona and the safety clause survive any model output.
    """
    tail = f" {SAFETY_CLAUSE}" if kind in MODERATED_KINDS else ""
    head = f"{descriptor[0].upper()}{descriptor[1:]}. " if descriptor else ""
    room = max_chars - len(head) - len(tail) - 1
    scene = truncate_chars(scene.strip().rstrip("."), max(room, 0))
    body = f"{head}{scene}." if scene else head.rstrip()
    return f"{body}{tail}".strip()
