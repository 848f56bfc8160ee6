"""The OpenAI Images API on the interface (issue #22): the same flows, queues and policy as the native routes.

``routes`` translates requests and answers, ``catalogue`` maps each public model id to one native flow,
``models`` is the wire format, ``output_store`` keeps ``response_format=url`` outputs behind signed URLs.
"""

from services.interface.openai_images.routes import router

# Paths whose errors take OpenAI's shape, and the one path family a signed URL opens without a key.
OPENAI_PREFIXES = ("/v1/images/", "/v1/models")

__all__ = ["OPENAI_PREFIXES", "router"]
