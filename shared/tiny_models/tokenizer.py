"""A small byte-level BPE tokenizer with Qwen's special tokens and a ChatML template, trained offline."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# ChatML as Qwen renders it; image parts become the vision placeholder the Qwen2-VL processor expands.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "A photorealistic portrait of a young woman with long brown hair and green eyes, soft light.",
    "A man with short black hair, a beard and glasses smiling in a cafe, cinematic lighting.",
    "Describe the person's hair colour, hair style, eye colour, skin tone, age range and expression.",
    "Return a JSON object with the keys hair_color, hair_style, eye_color, skin_tone, age_range.",
    "You are a helpful assistant that writes detailed image prompts for a diffusion model.",
    "A short safe caption of ten to fifteen words describing the scene in the picture.",
    "sunset beach city street forest mountain studio bedroom kitchen park night rain snow",
    "red orange yellow green blue purple pink black white grey brown blonde auburn silver",
    "fully clothed, modest clothing, no nudity, safe for work, high quality, detailed, 8k",
    "Hello! How are you today? I am fine, thank you. What are you doing this weekend?",
    "0 1 2 3 4 5 6 7 8 9 10 15 18 20 25 30 40 50 100 { } [ ] : , \" ' . ! ? - _ ( )",
]


def build_tokenizer(
    vocab_size: int = 600, extra_corpus: list[str] | None = None, model_max_length: int = 1024
) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((_CORPUS + (extra_corpus or [])) * 4, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=model_max_length,
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    return hf_tok
