"""The role-free image worker (the interface's general text-to-image pool)."""

from services.image_worker.app import role_entrypoint

create_app, __getattr__ = role_entrypoint(None)
