from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.interface.flows import Flows
from services.interface.pool_set import Pools
from services.interface.settings import InterfaceSettings
from shared.queue_manager import BoundedQueue


async def get_flows(request: Request) -> Flows:
    return request.app.state.flows


async def get_settings(request: Request) -> InterfaceSettings:
    return request.app.state.settings


async def get_pools(request: Request) -> Pools:
    return request.app.state.pools


async def get_queues(request: Request) -> dict[str, BoundedQueue]:
    return request.app.state.queues


FlowsDep = Annotated[Flows, Depends(get_flows)]
SettingsDep = Annotated[InterfaceSettings, Depends(get_settings)]
PoolsDep = Annotated[Pools, Depends(get_pools)]
QueuesDep = Annotated[dict[str, BoundedQueue], Depends(get_queues)]
