"""The shorts image worker: the shared Z-Image engine in the `shorts` role (port: DEPLOYMENT.md)."""

from services.image_worker.app import role_entrypoint

create_app, __getattr__ = role_entrypoint("shorts")
