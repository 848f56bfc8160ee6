"""The scenes image worker: the shared Z-Image engine in the `scenes` role (port: DEPLOYMENT.md)."""

from services.image_worker.app import role_entrypoint

create_app, __getattr__ = role_entrypoint("scenes")
