"""The questions the VLM answers about a selfie, asked in one generation as one JSON object.

Kept in one module so the wording (which the parser depends on) changes in one place.
"""

from __future__ import annotations

SYSTEM_PROMPT = "You describe the visible appearance of the person in a photo, accurately and neutrally."

# key -> the question, in the order the model should answer. Keys are the ``Features`` field names.
QUESTIONS: dict[str, str] = {
    "hair_color": "hair colour (e.g. black, brown, blonde, red, grey)",
    "hair_style": "hair style and length (e.g. short curly, long straight, bald)",
    "eye_color": "eye colour",
    "skin_tone": "skin tone (e.g. fair, light, medium, olive, tan, brown, dark)",
    "age_range": "apparent age range (e.g. 20-30)",
    "gender_presentation": "gender presentation (feminine, masculine, androgynous)",
    "facial_hair": "facial hair (none, stubble, moustache, beard)",
    "glasses": "wears glasses: true or false",
    "expression": "facial expression (e.g. smiling, neutral, serious)",
    "accessories": "list of visible accessories (e.g. earrings, hat), [] if none",
    "description": "one sentence describing the person's appearance",
}


def analyze_prompt() -> str:
    lines = "\n".join(f'- "{key}": {question}' for key, question in QUESTIONS.items())
    return (
        "Look at the person in this photo and answer with ONE JSON object with exactly these keys:\n"
        f"{lines}\n"
        "Use null for anything you cannot see. Answer with the JSON object only, no other text."
    )
