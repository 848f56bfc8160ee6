"""Request and response models that cross a service boundary (docs/ARCHITECTURE.md, "Contracts").

Every request model forbids unknown fields: a typo in a client ("sed" for "seed") is a 422, not a silently
random image.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.image_params import GuidanceScale, ImageCount, PartialImages, Steps
from shared.styles import StyleName

MAX_PROMPT_CHARS = 2000
MAX_MESSAGE_CHARS = 2000
MAX_HISTORY_TURNS = 50
MAX_SEED = 2**32 - 1
# A guard check reads a user prompt, an expanded prompt, a caption or a reply: all far below this.
MAX_MODERATE_CHARS = 8000

ImageFormat = Literal["png", "jpeg", "webp"]
Source = Literal["model", "template"]
NonEmptyPrompt = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS)
]
NonEmptyMessage = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_MESSAGE_CHARS)
]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
PersonaId = Annotated[str, Field(pattern=r"^per_[0-9a-f]{24}$", description="A stored persona's id")]
MAX_PERSONA_NAME_CHARS = 80
MAX_PERSONA_TEXT_CHARS = 500
# Avatar candidates one persona keeps (a profile job makes up to this many per selfie).
MAX_PERSONA_AVATARS = 4
PersonaName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PERSONA_NAME_CHARS)
]
PersonaText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PERSONA_TEXT_CHARS)
]
Side = Annotated[int, Field(ge=16, le=2048, multiple_of=16)]
Timings = dict[str, float]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpenModel(BaseModel):
    """Responses: clients must tolerate new fields, so we do too when reading them."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())


# --- selfie analysis -------------------------------------------------------------------------------------


class Features(StrictModel):
    """Appearance traits read from a selfie; ``None`` means the model gave no usable answer."""

    hair_color: str | None = Field(None, max_length=64)
    hair_style: str | None = Field(None, max_length=64)
    eye_color: str | None = Field(None, max_length=64)
    skin_tone: str | None = Field(None, max_length=64)
    age_range: str | None = Field(None, max_length=32)
    gender_presentation: str | None = Field(None, max_length=32)
    facial_hair: str | None = Field(None, max_length=64)
    glasses: bool | None = None
    expression: str | None = Field(None, max_length=64)
    accessories: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=10)
    description: str | None = Field(None, max_length=400)


class FaceBox(StrictModel):
    x: int
    y: int
    w: int
    h: int


class QualitySignals(OpenModel):
    face_size_ratio: float | None = None
    sharpness: float | None = None
    exposure_mean: float | None = None
    clipped_fraction: float | None = None
    frontalness: float | None = None


class FaceMeta(OpenModel):
    detected: bool
    box: FaceBox | None = None
    confidence: float | None = None
    landmarks: list[tuple[float, float]] | None = None
    face_count: int = 0
    quality_score: float = Field(ge=0.0, le=1.0)
    signals: QualitySignals = Field(default_factory=QualitySignals)
    detector: str | None = Field(
        None,
        description='The face detector used: "yolov8-face" (the specified one), "nudenet" (chosen by the '
        'operator), "nudenet-fallback" (the YOLOv8-face weights were missing or did not load) or "haar".',
    )


class AnalyzeResponse(OpenModel):
    face: FaceMeta
    features: Features
    features_parsed: bool = True
    model: dict[str, str] = Field(default_factory=dict)
    timings_ms: Timings = Field(default_factory=dict)


# --- image generation ------------------------------------------------------------------------------------


class ImageParams(StrictModel):
    """The generation knobs of every text-to-image request; bounds and defaults: shared/image_params.py.

    ``n`` images come from one worker call, in one batched pipeline call, with seeds seed, seed+1, ...
    ``negative_prompt`` only matters when ``guidance_scale`` is above 0 (Turbo's default is 0).
    """

    negative_prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | None = None
    seed: Seed | None = None
    width: Side | None = None
    height: Side | None = None
    steps: Steps | None = None
    guidance_scale: GuidanceScale | None = None
    n: ImageCount = 1
    # Partial images of the first image, decoded during the denoising: sent as ``partial_image`` on the
    # job's progress events (docs/JOBS.md) and as OpenAI's partial-image events. Nobody sees them on a
    # request waited for without a stream, so leave it 0 there.
    partial_images: PartialImages = 0


WebhookEventName = Literal["start", "progress", "completed"]


class JobOptions(StrictModel):
    """Fields that shape a request's job, not its image (docs/JOBS.md): where its events are delivered."""

    webhook: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    # The events sent to ``webhook``; left out: all of them.
    webhook_events_filter: Annotated[list[WebhookEventName], Field(min_length=1, max_length=3)] | None = None


# Left out of a job's stored spec: they are the job's own fields, not its work's.
JOB_OPTION_FIELDS = frozenset(JobOptions.model_fields)


class ImageGenRequest(ImageParams, JobOptions):
    """Text to image as clients ask for it (the interface's /v1/imagegen and private imagegen)."""

    prompt: NonEmptyPrompt
    # A preset of shared/styles.py: the interface appends its phrase to the prompt.
    style: StyleName | None = None


class GenerateRequest(ImageParams):
    """What an image worker takes: the final prompt (styled and policy-checked) and the generation knobs."""

    prompt: NonEmptyPrompt
    output_format: ImageFormat = "png"
    # Image-to-image: the start image (base64 JPEG, PNG or WebP; a ``data:`` URL prefix is allowed), bounded
    # and decoded by the worker, and how far from it (0, 1]: the worker's role default when absent, and its
    # /healthz ``limits`` bounds. Without ``init_image``, text-to-image.
    init_image: str | None = None
    strength: Annotated[float, Field(gt=0.0, le=1.0)] | None = None


class GeneratedImage(OpenModel):
    """One image of a response, with the seed that makes it again alone (``n=1``)."""

    image_base64: str
    seed: int


# Every image response carries its first image as before (``image_base64`` and ``seed``) and the others, if
# any, in ``more_images``: each image once. Repeating the first in a list of all would double every
# single-image response (a 2 MB image: 1.4 ms of JSON encoding becomes 8 ms, on the event loop).


class GenerateResponse(OpenModel):
    # The first image; its seed is ``seed``.
    image_base64: str
    # Images 2..n of a request for n, seeds seed+1, ...; empty for one.
    more_images: list[GeneratedImage] = Field(default_factory=list)
    format: ImageFormat
    seed: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    # The negative prompt the pipeline used: null when none was given or guidance is 0 (which ignores it).
    negative_prompt: str | None = None
    prompt_used: str
    prompt_tokens: int
    prompt_truncated: bool
    soft_blocked: bool = False
    # True when the pixels themselves passed the output safety check (moderated roles).
    safety_checked: bool = False
    # Image-to-image: the strength the worker used (the request's or its role's default); null otherwise.
    strength: float | None = None
    model: str
    role: str
    timings_ms: Timings = Field(default_factory=dict)


class ProfileGenerateRequest(StrictModel):
    """The profile worker builds its own prompt from features, so every client gets the same avatar style."""

    features: Features
    # Free text that replaces the house style (the interface turns a preset name into its phrase).
    style: Annotated[str, Field(max_length=200)] | None = None
    seed: Seed | None = None
    width: Side | None = None
    height: Side | None = None
    steps: Steps | None = None
    guidance_scale: GuidanceScale | None = None
    n: ImageCount = 1
    output_format: ImageFormat = "png"


# --- LLM -------------------------------------------------------------------------------------------------


class ChatTurn(StrictModel):
    role: Literal["user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)]


History = Annotated[list[ChatTurn], Field(max_length=MAX_HISTORY_TURNS)]


# The moderation decision of a prompt on a moderated role (shared/policy): passes unchanged, gets coverage
# (clothing, occlusion or framing, and the coverage clause), or is refused. Unmoderated roles: neutral or
# blocked.
ModerationDecision = Literal["neutral", "covered", "blocked"]
# Why a prompt is covered: suggestive words (lingerie, seductive) or explicit ones (nudity, sexual acts).
CoverageReason = Literal["suggestive", "explicit"]


class Moderation(OpenModel):
    decision: ModerationDecision
    # "suggestive" / "explicit" when covered ("guard" when the guard model asked for it); None when neutral.
    reason: str | None = None


class ExpandRequest(StrictModel):
    message: NonEmptyMessage
    history: History = Field(default_factory=list)
    persona: Features | None = None
    # A preset from shared/styles.py: the expansion is told to render it, and its phrase ends the prompt.
    style: StyleName | None = None
    # Set by the interface on moderated kinds when the message needs coverage (shared/policy decided it):
    # the expansion then gets the coverage rules and ends with the coverage clause. None: a neutral message,
    # expanded as it is (no rules, no clause). Ignored on 1:1, which has no moderation beyond the hard block.
    coverage: CoverageReason | None = None


class ExpandResponse(OpenModel):
    prompt: str
    source: Source
    model: str
    shortened_message: str | None = None
    # How a long message was shortened before expansion: by the model, or by deterministic keyword truncation.
    shortened_by: Literal["model", "truncation"] | None = None
    # Tokens of ``prompt`` as the image model's text encoder reads it (its chat wrapper included), counted
    # with the LLM's tokenizer; None when no tokenizer is loaded (a template answer while the model is down).
    prompt_tokens: int | None = None
    # The expansion was cut at a phrase boundary to fit the token budget, the prompt's character limit, or
    # the generation cap: the prompt is shorter than what the model wrote.
    trimmed: bool = False
    timings_ms: Timings = Field(default_factory=dict)


class CaptionRequest(StrictModel):
    prompt: NonEmptyPrompt
    message: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] | None = None


class CaptionResponse(OpenModel):
    caption: str
    word_count: int
    source: Source
    model: str
    adjusted: bool = False
    timings_ms: Timings = Field(default_factory=dict)


class ReplyRequest(StrictModel):
    message: NonEmptyMessage
    history: History = Field(default_factory=list)
    # Exactly one of the two on the public route; the interface resolves ``persona_id`` to ``persona``
    # before the LLM is asked. Excluded from dumps: the LLM pod never sees an id it cannot resolve.
    persona: Features | None = None
    persona_id: PersonaId | None = Field(None, exclude=True)
    # Who the persona is besides its looks (a stored persona's own fields when ``persona_id`` is given).
    name: PersonaName | None = None
    personality: PersonaText | None = None
    speaking_style: PersonaText | None = None

    @model_validator(mode="after")
    def _one_persona(self) -> ReplyRequest:
        if (self.persona is None) == (self.persona_id is None):
            raise ValueError("give exactly one of persona and persona_id")
        return self


class ReplyResponse(OpenModel):
    reply: str
    source: Source
    model: str
    timings_ms: Timings = Field(default_factory=dict)


# --- guard (content safety classifier on the LLM pod) ---------------------------------------------------

GuardVerdict = Literal["safe", "unsafe", "controversial", "unparsed"]
# Qwen3Guard's categories, as its model card lists them; Jailbreak is judged in prompts only.
GUARD_CATEGORIES = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)
ModerateText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_MODERATE_CHARS)
]


class ModerateRequest(StrictModel):
    """``prompt``: judge ``text`` as a user's request. ``response``: judge ``text`` as the model's answer to
    ``prompt`` (the user's request, when there was one)."""

    text: ModerateText
    kind: Literal["prompt", "response"] = "prompt"
    prompt: Annotated[str, Field(max_length=MAX_MODERATE_CHARS)] | None = None

    @model_validator(mode="after")
    def _prompt_only_for_responses(self) -> ModerateRequest:
        if self.kind == "prompt" and self.prompt is not None:
            raise ValueError("prompt is the request a response answers: only with kind='response'")
        return self


class ModerateResponse(OpenModel):
    # "unparsed": the guard answered, but not in its format; callers treat it as a failed check.
    verdict: GuardVerdict
    categories: list[str] = Field(default_factory=list)
    # Response moderation only: whether the answer was a refusal.
    refusal: bool | None = None
    model: str
    source: Literal["guard"] = "guard"
    timings_ms: Timings = Field(default_factory=dict)


# --- public interface ------------------------------------------------------------------------------------


class ChatImageRequest(ImageParams, JobOptions):
    message: NonEmptyMessage
    history: History = Field(default_factory=list)
    persona: Features | None = None
    # A stored persona of the same API key (POST /v1/personas): its features stand in for ``persona``, and its
    # approved avatar is where the image starts (the appearance lock) unless ``appearance_lock`` is false.
    persona_id: PersonaId | None = None
    appearance_lock: bool = True
    # How far the image may move from the avatar, (0, 1]: the image worker's role default when absent; within
    # the deployed workers' bounds. Only used when the image starts from an avatar.
    strength: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    # A preset of shared/styles.py: the LLM expansion is asked to render it.
    style: StyleName | None = None

    @model_validator(mode="after")
    def _one_persona(self) -> ChatImageRequest:
        if self.persona is not None and self.persona_id is not None:
            raise ValueError("give persona or persona_id, not both")
        return self


class ImageParamsUsed(OpenModel):
    """How a public response's images were made: the values the image worker used, defaults filled in."""

    # Images 2..n of a request for n (seeds seed+1, ...); the first is the response's image field and seed.
    more_images: list[GeneratedImage] = Field(default_factory=list)
    width: int
    height: int
    steps: int
    guidance_scale: float
    # Null when none was given, or when guidance 0 made the pipeline ignore it.
    negative_prompt: str | None = None
    style: StyleName | None = None


class AppearanceLock(OpenModel):
    """How a persona's image was tied to its approved avatar: started from it (image to image)."""

    mode: Literal["img2img"] = "img2img"
    persona_id: str
    avatar_index: int
    strength: float | None = None


class IdentityReport(OpenModel):
    """How close the image's face is to the avatar's (cosine of face embeddings, -1..1)."""

    similarity: float | None = None
    # Why there is no number: no face found on one side, or the check could not be made.
    reason: str | None = None
    # False where the embedder cannot mean anything (the tiny random test models): plumbing, not a measure.
    meaningful: bool = False
    embedder: str | None = None


class ChatImageResponse(ImageParamsUsed):
    image_base64: str
    caption: str
    prompt_used: str
    # Tokens of prompt_used as the image model's text encoder saw them; truncated when over its limit.
    prompt_tokens: int | None = None
    prompt_truncated: bool = False
    seed: int
    source: Source
    caption_source: Source = "model"
    # What the content policy decided for this image's prompt (docs/MODERATION.md).
    moderation: Moderation | None = None
    # Set when the image started from the persona's approved avatar (``persona_id``).
    appearance_lock: AppearanceLock | None = None
    # The face of the (first) image against the avatar's, when the image started from an avatar.
    identity: IdentityReport | None = None
    timings_ms: Timings = Field(default_factory=dict)


class ImageGenResponse(ImageParamsUsed):
    image_base64: str
    prompt_used: str
    prompt_tokens: int | None = None
    prompt_truncated: bool = False
    seed: int
    soft_blocked: bool = False
    moderation: Moderation | None = None
    timings_ms: Timings = Field(default_factory=dict)


class ProfileCreateResponse(ImageParamsUsed):
    profile_image_base64: str
    features: Features
    # False when the VLM's answer could not be read: the features are then all null, not guessed.
    features_parsed: bool = True
    face: FaceMeta
    prompt_used: str
    seed: int
    timings_ms: Timings = Field(default_factory=dict)


class HealthResponse(OpenModel):
    status: Literal["ok", "loading", "error", "degraded"]
    service: str
    detail: str | None = None
    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    role: str | None = None


# --- personas (services/interface/personas/) -------------------------------------------------------------


def persona_text(features: Features | None, *texts: str | None) -> str:
    """Every word of a persona (its traits and its name, personality, speaking style), one per line: what the
    word rules judge, since all of it reaches image prompts and replies later."""
    f = features
    traits = [f.hair_color, f.hair_style, f.eye_color, f.skin_tone, f.age_range, f.gender_presentation,
              f.facial_hair, f.expression, *f.accessories, f.description] if f else []  # fmt: skip
    return "\n".join(t for t in (*texts, *traits) if t)


class PersonaCreate(StrictModel):
    """A persona from its features (JSON); one made from a selfie is a multipart POST instead."""

    name: PersonaName | None = None
    features: Features
    personality: PersonaText | None = None
    speaking_style: PersonaText | None = None


class PersonaPatch(StrictModel):
    """The fields to change; a field sent as null is cleared (features cannot be: send new ones)."""

    name: PersonaName | None = None
    features: Features | None = None
    personality: PersonaText | None = None
    speaking_style: PersonaText | None = None

    @model_validator(mode="after")
    def _features_stay(self) -> PersonaPatch:
        if "features" in self.model_fields_set and self.features is None:
            raise ValueError("features cannot be cleared; send the new features")
        return self


class PersonaAvatarChoice(StrictModel):
    index: int = Field(ge=0, lt=MAX_PERSONA_AVATARS)


class PersonaAvatar(OpenModel):
    index: int
    approved: bool


class PersonaView(OpenModel):
    id: str
    name: str | None = None
    features: Features
    personality: str | None = None
    speaking_style: str | None = None
    avatars: list[PersonaAvatar] = Field(default_factory=list)
    # The approved avatar's PNG (GET, with the API key); null until one is approved.
    avatar_url: str | None = None
    created_at: float
    updated_at: float


class PersonaList(OpenModel):
    data: list[PersonaView]
    # Pass as ``cursor`` for the next (older) page; null on the last page.
    next_cursor: str | None = None


# --- generated personas (LLM service /v1/personas/generate) ---------------------------------------------

PERSONA_MIN_AGE = 18
PERSONA_MAX_AGE = 100
MAX_PERSONA_BRIEF_CHARS = 500
PersonaAge = Annotated[int, Field(ge=PERSONA_MIN_AGE, le=PERSONA_MAX_AGE)]


class PersonaBrief(StrictModel):
    """A few words about the persona wanted ("a cheerful barista from Lisbon"); the LLM writes the rest."""

    brief: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=3, max_length=MAX_PERSONA_BRIEF_CHARS)
    ]


class PersonaDraft(StrictModel):
    """What the LLM must answer, as JSON of exactly this schema (its structured output): an adult, with
    appearance in the selfie analysis's own ``Features``, so a generated persona is drawn and described
    like one made from a photo."""

    name: PersonaName
    age: PersonaAge
    features: Features
    personality: PersonaText
    speaking_style: PersonaText

    @model_validator(mode="after")
    def _adult_look(self) -> PersonaDraft:
        # The age field is bounded by the schema, but the look is free text: "15-17" there would draw a minor.
        digits = "".join(c if c.isascii() and c.isdigit() else " " for c in self.features.age_range or "")
        stated = [int(n) for n in digits.split()]
        if any(n < PERSONA_MIN_AGE for n in stated):
            raise ValueError("features.age_range must be an adult's")
        return self

    def policy_text(self) -> str:
        """Every word of the persona, for the word rules: all of it reaches prompts and replies later."""
        return persona_text(self.features, self.name, self.personality, self.speaking_style)


class PersonaGenerate(PersonaBrief):
    """``POST /v1/personas/generate``: the brief, and how the profile worker draws the avatar(s)."""

    seed: Seed | None = None
    steps: Steps | None = None
    # A preset of shared/styles.py for the avatar; the house style when absent.
    style: StyleName | None = None
    n: ImageCount = 1


class GeneratedPersonaView(PersonaView):
    """The stored persona the brief made, with what only a generated one has."""

    age: int
    # "model", or "template" where the LLM service answered its labelled stand-in (LLM_TEMPLATE_FALLBACK).
    source: Source


class GeneratedPersona(OpenModel):
    """``persona`` as the model wrote it (validated), or, only where ``source`` is "template", a labelled
    stand-in built from the brief while the model is down or wrote junk (``LLM_TEMPLATE_FALLBACK``)."""

    persona: PersonaDraft
    source: Source
    model: str
    # Model answers read, the retry included; 0 for a template made without asking the model.
    attempts: int = 0
    timings_ms: Timings = Field(default_factory=dict)


# --- identity score (selfie worker /v1/identity/compare) ------------------------------------------------

MAX_IDENTITY_CANDIDATES = 4
IdentityReason = Literal["no_face_in_reference", "no_face_in_candidate"]
# Base64 of a JPEG, PNG or WebP (a ``data:`` URL prefix is allowed); the worker bounds its decoded bytes.
Base64Image = Annotated[str, StringConstraints(min_length=1)]


class IdentityCompareRequest(StrictModel):
    """How alike the largest face of each candidate is to the largest face of ``reference``.

    ``reference`` is the persona's approved avatar; ``candidates`` are images made for it (chat images).
    """

    reference: Base64Image
    candidates: list[Base64Image] = Field(min_length=1, max_length=MAX_IDENTITY_CANDIDATES)


class IdentityScore(OpenModel):
    """One candidate's score: the cosine similarity of the two face embeddings, or null with the reason."""

    similarity: float | None = Field(None, ge=-1.0, le=1.0)
    reason: IdentityReason | None = None


class IdentityCompareResponse(OpenModel):
    """``scores`` in the order of ``candidates``. ``embedder`` names what embedded the faces (public names
    only); ``meaningful`` is false when it has random weights (the tiny test models): the numbers are then
    real cosines of noise features, fit for tests and never for a decision."""

    scores: list[IdentityScore]
    embedder: str
    meaningful: bool
    timings_ms: Timings = Field(default_factory=dict)
