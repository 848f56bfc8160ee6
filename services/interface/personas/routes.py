"""The persona routes: make (from features, or from a selfie through the profile job), list, read, change,
pick the approved avatar, delete. A persona is its API key's: another key gets 404 on every route."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from services.interface.admission import owner_of
from services.interface.jobs.submission import answer
from services.interface.persona_generation import check_brief
from services.interface.personas.access import persona_store, resolve_persona
from services.interface.personas.avatars import avatar_candidates, profile_answer
from services.interface.personas.records import (
    ID_PATTERN,
    MAX_AVATARS,
    PersonaNotFound,
    PersonaRecord,
    new_persona_id,
    persona_path,
)
from services.interface.routes.profile import submit_profile
from shared.errors import ImgPodError, UnsupportedMedia, ValidationFailed
from shared.image_params import GuidanceScale, ImageCount, Steps
from shared.models import (
    JobOptions,
    PersonaAvatarChoice,
    PersonaCreate,
    PersonaList,
    PersonaName,
    PersonaPatch,
    PersonaText,
    PersonaView,
    Seed,
    StrictModel,
    persona_text,
)

router = APIRouter(tags=["personas"])
PersonaId = Annotated[str, Path(pattern=ID_PATTERN, description="The id POST /v1/personas answered with")]
AvatarIndex = Annotated[int, Path(ge=0, lt=MAX_AVATARS)]
# A selfie's form: the file, at most these fields (each sent once).
_MAX_FORM_FIELDS = 16


class AvatarNotFound(ImgPodError):
    status_code = 404
    code = "avatar_not_found"


class SelfiePersonaForm(StrictModel):
    """The multipart form of a persona made from a selfie: the profile route's fields, and the persona's."""

    file: bytes = Field(description="The selfie: JPEG, PNG or WebP", json_schema_extra={"format": "binary"})
    style: Annotated[str, Field(max_length=200)] | None = None
    seed: Seed | None = None
    steps: Steps | None = None
    guidance_scale: GuidanceScale | None = None
    n: ImageCount = 1
    name: PersonaName | None = None
    personality: PersonaText | None = None
    speaking_style: PersonaText | None = None


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema for the OpenAPI document, its nested models referring to the document's own
    (Features is there: the views carry it)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


# One route, two bodies: FastAPI declares one, so the document is given both.
_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline_schema(PersonaCreate)},
            "multipart/form-data": {"schema": _inline_schema(SelfiePersonaForm)},
        },
    }
}
_CREATED = {
    201: {"headers": {"Location": {"description": "The persona's URL", "schema": {"type": "string"}}}}
}


BaseModelT = TypeVar("BaseModelT", bound=BaseModel)


def _validated(model: type[BaseModelT], data: Any, *, json: bool = False) -> BaseModelT:
    try:
        return model.model_validate_json(data) if json else model.model_validate(data)
    except ValidationError as exc:
        # The house 422 shape, as for a body FastAPI validated itself.
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def _from_selfie(request: Request, owner: str | None) -> PersonaRecord:
    store = persona_store(request)
    # Refused before the selfie costs a profile job (the GPU's time), not after.
    await store.check_room(owner)
    async with request.form(max_files=1, max_fields=_MAX_FORM_FIELDS) as form:
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name in fields:
                raise ValidationFailed(f"{name}: sent more than once", param=name)
            fields[name] = value
        upload = fields.get("file")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed("file: a selfie is required (multipart file field 'file')", param="file")
        # Validated without the upload (its bytes are the profile job's to check), then with it named.
        checked = _validated(SelfiePersonaForm, {**fields, "file": b""})
        await check_brief(persona_text(None, checked.name, checked.personality, checked.speaking_style))
        job_form = checked.model_dump(include={"style", "steps", "guidance_scale", "n"})
        submitted = await submit_profile(
            request, upload, job_form, checked.seed, JobOptions(), asynchronous=False
        )
    profile = profile_answer(await answer(request, submitted))
    avatars = await avatar_candidates(profile)
    record = PersonaRecord.drawn(
        owner,
        profile.features,
        len(avatars),
        name=checked.name,
        personality=checked.personality,
        speaking_style=checked.speaking_style,
    )
    return await store.create(record, avatars)


@router.post(
    "/v1/personas",
    response_model=PersonaView,
    status_code=201,
    openapi_extra=_CREATE_BODY,
    responses=_CREATED,
)
async def create_persona(request: Request, response: Response) -> PersonaView:
    """A persona from its features (JSON, no avatar yet), or from a selfie (multipart, as POST
    /v1/profile/create: the same checks, queue and workers), whose features and avatar(s) it keeps."""
    owner = owner_of(request)
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        record = await _from_selfie(request, owner)
    elif media == "application/json":
        body = _validated(PersonaCreate, await request.body(), json=True)
        fields = {name: getattr(body, name) for name in ("name", "personality", "speaking_style")}
        await check_brief(persona_text(body.features, *fields.values()))
        record = PersonaRecord(id=new_persona_id(), owner=owner, features=body.features, **fields)
        record = await persona_store(request).create(record)
    else:
        raise UnsupportedMedia("send application/json (features) or multipart/form-data (a selfie)")
    response.headers["Location"] = persona_path(record.id)
    return record.view()


@router.get("/v1/personas", response_model=PersonaList)
async def list_personas(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None, Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of a page")
    ] = None,
) -> PersonaList:
    """This API key's personas, newest first."""
    records, after = await persona_store(request).list(
        owner_of(request), limit, int(cursor) if cursor is not None else None
    )
    return PersonaList(
        data=[r.view() for r in records], next_cursor=str(after) if after is not None else None
    )


@router.get("/v1/personas/{persona_id}", response_model=PersonaView)
async def get_persona(persona_id: PersonaId, request: Request) -> PersonaView:
    return (await resolve_persona(request, owner_of(request), persona_id)).view()


@router.get(
    "/v1/personas/{persona_id}/avatars/{index}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "The avatar candidate's PNG"}},
)
async def get_avatar(persona_id: PersonaId, index: AvatarIndex, request: Request) -> Response:
    owner = owner_of(request)
    await resolve_persona(request, owner, persona_id)
    png = await persona_store(request).avatar(owner, persona_id, index)
    if png is None:
        raise AvatarNotFound(f"this persona has no avatar {index}", stage="personas")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


@router.patch("/v1/personas/{persona_id}", response_model=PersonaView)
async def patch_persona(persona_id: PersonaId, patch: PersonaPatch, request: Request) -> PersonaView:
    """Change the fields sent; one sent as null is cleared (not features)."""
    changes = {name: getattr(patch, name) for name in patch.model_fields_set}
    await check_brief(persona_text(patch.features, patch.name, patch.personality, patch.speaking_style))
    return await _update(request, persona_id, lambda record: record.changed(**changes))


@router.put("/v1/personas/{persona_id}/avatar", response_model=PersonaView)
async def approve_avatar(
    persona_id: PersonaId, choice: Annotated[PersonaAvatarChoice, Body()], request: Request
) -> PersonaView:
    """Pick the approved avatar among the candidates."""

    def approve(record: PersonaRecord) -> PersonaRecord:
        if choice.index >= record.avatar_count:
            raise ValidationFailed(
                f"index: this persona has {record.avatar_count} avatar candidate(s)", param="index"
            )
        return record.changed(approved=choice.index)

    return await _update(request, persona_id, approve)


@router.delete("/v1/personas/{persona_id}", status_code=204, response_class=Response)
async def delete_persona(persona_id: PersonaId, request: Request) -> Response:
    """Delete the persona and its avatars."""
    if not await persona_store(request).delete(owner_of(request), persona_id):
        raise PersonaNotFound("no such persona for this API key", stage="personas")
    return Response(status_code=204)


async def _update(request: Request, persona_id: str, change: Any) -> PersonaView:
    record = await persona_store(request).update(owner_of(request), persona_id, change)
    if record is None:
        raise PersonaNotFound("no such persona for this API key", stage="personas")
    return record.view()
