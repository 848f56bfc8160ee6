"""The chat1to1 image worker: the shared Z-Image engine in the `chat1to1` role (port: DEPLOYMENT.md)."""

from services.image_worker.app import role_entrypoint

create_app, __getattr__ = role_entrypoint("chat1to1")
