"""The generation parameters a client may set on an image route, and the schema bounds every service shares.

Two layers of bounds, one source each:

* The schema bounds here (``MAX_STEPS``, ``MAX_GUIDANCE``, ``MAX_IMAGES``): what any deployment could accept.
  A value past them is a 422 from the request model, on the interface and on the workers alike.
* The deployment bounds: what the deployed workers accept (their settings), advertised on each worker's
  ``/healthz`` under ``limits`` and checked by the interface before a request takes a queue slot
  (``services/interface/flows.py``, ``check_limits``). They never exceed the schema bounds.

Why guidance defaults to 0: Z-Image-Turbo is distilled to run without classifier-free guidance; in diffusers'
``ZImagePipeline`` a guidance scale of 0 turns guidance off (``do_classifier_free_guidance`` is
``guidance_scale > 0``) and the negative prompt is then never encoded (``encode_prompt``), so it has no
effect. A scale above 0 runs the transformer twice per step: twice the work per image.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_STEPS = 50
MAX_GUIDANCE = 20.0
# Images per request: one worker call, generated in one batched pipeline call.
MAX_IMAGES = 4
# Partial images a request may ask for: OpenAI's ``partial_images`` bound. Each is one more VAE decode.
MAX_PARTIAL_IMAGES = 3
# Seeds are 32-bit so any seed a response reports can be sent back as a request's seed.
SEED_SPACE = 2**32

Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
GuidanceScale = Annotated[float, Field(ge=0.0, le=MAX_GUIDANCE)]
ImageCount = Annotated[int, Field(ge=1, le=MAX_IMAGES)]
PartialImages = Annotated[int, Field(ge=0, le=MAX_PARTIAL_IMAGES)]


def image_seeds(seed: int, n: int) -> list[int]:
    """The seed of each of ``n`` images: seed, seed+1, ... (wrapping at 2**32).

    Each image is the one a request with ``n=1`` and that image's seed makes (up to the float rounding that
    batching may change), so any one of them can be made again alone.
    """
    return [(seed + i) % SEED_SPACE for i in range(n)]
