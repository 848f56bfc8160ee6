from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.interface.deps import PoolsDep, QueuesDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(pools: PoolsDep, queues: QueuesDep, settings: SettingsDep) -> dict[str, Any]:
    """The interface is up; per pool, how many workers are in rotation (never their URLs); the guard's mode
    (enforce, observe, off: see services/interface/guard.py)."""
    pool_view = {p.name: {"healthy": p.healthy_count, "configured": len(p.workers)} for p in pools.all()}
    queue_view = {
        name: {
            "depth": q.depth,
            "in_flight": q.in_flight,
            "consumers": q.consumers,
            # The service time admission works with: learnt from successful worker calls only.
            "service_ms": round(q.mean_service_s * 1000, 1),
        }
        for name, q in queues.items()
    }
    degraded = any(v["healthy"] == 0 for v in pool_view.values())
    return {
        "status": "degraded" if degraded else "ok",
        "service": "interface",
        "guard": settings.guard,
        "pools": pool_view,
        "queues": queue_view,
    }
