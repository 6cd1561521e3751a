"""The jobs API of newer ComfyUI frontends, over the existing queue and history (ComfyUI's shapes):

- `GET /api/jobs?status=pending,in_progress,completed,failed,cancelled&sort_by=created_at|execution_duration
  &sort_order=desc|asc&limit=N&offset=M&workflow_id=ID` → `{jobs: [...], pagination: {offset, limit,
  total, has_more}}`
- `GET /api/jobs/{id}` → one job with its outputs, status messages and workflow (404 if unknown)
- `POST /api/jobs/{id}/cancel` → `{cancelled}`: interrupts it when running, dequeues it when pending;
  a finished or unknown id is a no-op (`false`), so the call can be repeated safely
- `POST /api/jobs/cancel` `{job_ids: [...]}` → `{cancelled}` (any of them)

A job is a queue item or a history entry. History statuses: success → completed; error → failed, or
cancelled when the run was interrupted (diffgraph records interrupted runs as status_str "interrupted").
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine.server.keys import QUEUE_KEY, STORE_KEY
from engine.server.security import BadRequest, read_json

PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED = (
    "pending",
    "in_progress",
    "completed",
    "failed",
    "cancelled",
)
ALL_STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
HISTORY_STATUSES = frozenset({COMPLETED, FAILED, CANCELLED})
PREVIEWABLE = frozenset({"images", "video", "audio", "3d", "text"})
TERMINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")
MAX_CANCEL_BATCH = 1000


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _workflow_id(extra_data: dict[str, Any]) -> Any:
    pnginfo = extra_data.get("extra_pnginfo")
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    return workflow.get("id") if isinstance(workflow, dict) else None


def queue_job(item: list[Any], status: str, *, detail: bool = False) -> dict[str, Any]:
    """A queue item [number, prompt_id, prompt, extra_data, targets] as a job."""
    number, prompt_id, prompt, extra_data, _targets = item
    job = _without_none(
        {
            "id": prompt_id,
            "status": status,
            "priority": number,
            "create_time": extra_data.get("create_time"),
            "outputs_count": 0,
            "previewable_outputs_count": 0,
            "workflow_id": _workflow_id(extra_data),
        }
    )
    if detail:
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def outputs_summary(outputs: dict[str, Any]) -> tuple[int, int, dict[str, Any] | None]:
    """(outputs_count, previewable_outputs_count, preview_output): the preview is the first saved
    ("output") previewable item, else the first previewable one."""
    count = previewable = 0
    preview: dict[str, Any] | None = None
    fallback: dict[str, Any] | None = None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                fmt = str(item.get("format", ""))
                if not (media_type in PREVIEWABLE or fmt.startswith(("video/", "audio/"))):
                    continue
                previewable += 1
                enriched = {**item, "nodeId": node_id, "mediaType": item.get("mediaType", media_type)}
                if preview is None and item.get("type") == "output":
                    preview = enriched
                elif fallback is None:
                    fallback = enriched
    return count, previewable, preview or fallback


def history_job(prompt_id: str, entry: dict[str, Any], *, detail: bool = False) -> dict[str, Any]:
    number, _, prompt, extra_data, _targets = entry["prompt"]
    status_info = entry.get("status") or {}
    started = ended = error = None
    interrupted = status_info.get("status_str") == "interrupted"
    for message in status_info.get("messages", []):
        if not (isinstance(message, list | tuple) and len(message) >= 2 and isinstance(message[1], dict)):
            continue
        event, data = message[0], message[1]
        if event == "execution_start":
            started = data.get("timestamp")
        elif event in TERMINAL_EVENTS:
            ended = data.get("timestamp")
            error = data if event == "execution_error" else error
            interrupted = interrupted or event == "execution_interrupted"
    status_str = status_info.get("status_str")
    status = COMPLETED if status_str == "success" else CANCELLED if interrupted else FAILED
    if status_str not in ("success", "error", "interrupted"):
        status = COMPLETED  # ComfyUI's reading of an entry without a status
    outputs = entry.get("outputs") or {}
    count, previewable, preview = outputs_summary(outputs)
    job = _without_none(
        {
            "id": prompt_id,
            "status": status,
            "priority": number,
            "create_time": extra_data.get("create_time") or started,
            "execution_start_time": started,
            "execution_end_time": ended,
            "execution_error": error,
            "outputs_count": count,
            "previewable_outputs_count": previewable,
            "preview_output": preview,
            "workflow_id": _workflow_id(extra_data),
        }
    )
    if detail:
        job["outputs"] = outputs
        job["execution_status"] = status_info
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def _sort_key(sort_by: str) -> Any:
    if sort_by == "execution_duration":

        def duration(job: dict[str, Any]) -> float:
            start, end = job.get("execution_start_time"), job.get("execution_end_time")
            return float(end - start) if start and end else 0.0

        return duration
    # Prompts queued within the same millisecond share a create_time: the queue number (ComfyUI's
    # "priority", later = newer) breaks the tie, so the order is the queue's, not the dict's.
    return lambda job: (job.get("create_time") or 0, job.get("priority") or 0)


def _query_list(request: web.Request) -> tuple[list[str], str, str, int | None, int]:
    query = request.query
    statuses = [s.strip().lower() for s in query.get("status", "").split(",") if s.strip()] or list(
        ALL_STATUSES
    )
    unknown = [s for s in statuses if s not in ALL_STATUSES]
    if unknown:
        raise BadRequest(400, f"unknown status {', '.join(unknown)}; valid: {', '.join(ALL_STATUSES)}")
    sort_by = query.get("sort_by", "created_at").lower()
    sort_order = query.get("sort_order", "desc").lower()
    if sort_by not in ("created_at", "execution_duration"):
        raise BadRequest(400, "sort_by must be 'created_at' or 'execution_duration'")
    if sort_order not in ("asc", "desc"):
        raise BadRequest(400, "sort_order must be 'asc' or 'desc'")
    limit = offset = None
    try:
        limit = int(query["limit"]) if "limit" in query else None
        offset = max(int(query.get("offset", "0")), 0)
    except ValueError:
        raise BadRequest(400, "limit and offset must be integers") from None
    if limit is not None and limit <= 0:
        raise BadRequest(400, "limit must be a positive integer")
    return statuses, sort_by, sort_order, limit, offset


async def list_jobs(request: web.Request) -> web.Response:
    statuses, sort_by, sort_order, limit, offset = _query_list(request)
    running, pending = request.app[QUEUE_KEY].snapshot()
    jobs = [queue_job(item, IN_PROGRESS) for item in running] if IN_PROGRESS in statuses else []
    jobs += [queue_job(item, PENDING) for item in pending] if PENDING in statuses else []
    if HISTORY_STATUSES & set(statuses):
        store = request.app[STORE_KEY]
        history = await store.call(store.history)
        for prompt_id, entry in history.items():
            job = history_job(prompt_id, entry)
            if job["status"] in statuses:
                jobs.append(job)
    workflow_id = request.query.get("workflow_id")
    if workflow_id:
        jobs = [job for job in jobs if job.get("workflow_id") == workflow_id]
    jobs.sort(key=_sort_key(sort_by), reverse=sort_order == "desc")
    total = len(jobs)
    page = jobs[offset:] if limit is None else jobs[offset : offset + limit]
    pagination = {"offset": offset, "limit": limit, "total": total, "has_more": offset + len(page) < total}
    return web.json_response({"jobs": page, "pagination": pagination})


async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    store = request.app[STORE_KEY]
    entry = await store.call(store.history_item, job_id)
    if entry is not None:
        return web.json_response(history_job(job_id, entry, detail=True))
    running, pending = request.app[QUEUE_KEY].snapshot()
    for items, status in ((running, IN_PROGRESS), (pending, PENDING)):
        for item in items:
            if item[1] == job_id:
                return web.json_response(queue_job(item, status, detail=True))
    raise BadRequest(404, f"no job {job_id!r}", "not_found")


async def _cancel(request: web.Request, job_id: str) -> bool:
    """Dequeue a pending job, else interrupt it if it is the running one; False when it is neither
    (finished, unknown, or it finished in between: never another prompt)."""
    queue = request.app[QUEUE_KEY]
    if await queue.store.call(queue.delete, [job_id]):
        return True
    return queue.interrupt_running(job_id)


async def cancel_job(request: web.Request) -> web.Response:
    return web.json_response({"cancelled": await _cancel(request, request.match_info["job_id"])})


async def cancel_jobs(request: web.Request) -> web.Response:
    body = await read_json(request)
    job_ids = body.get("job_ids") if isinstance(body, dict) else None
    if not isinstance(job_ids, list) or not all(isinstance(j, str) and j for j in job_ids):
        raise BadRequest(400, 'expected {"job_ids": ["<id>", ...]}')
    if len(job_ids) > MAX_CANCEL_BATCH:
        raise BadRequest(400, f"at most {MAX_CANCEL_BATCH} job ids at once")
    cancelled = False
    for job_id in job_ids:
        cancelled = await _cancel(request, job_id) or cancelled
    return web.json_response({"cancelled": cancelled})


# Registered with the other API routes: /jobs and /api/jobs (ComfyUI has only the latter).
ROUTES = [
    web.get("/jobs", list_jobs),
    web.post("/jobs/cancel", cancel_jobs),
    web.get("/jobs/{job_id}", get_job),
    web.post("/jobs/{job_id}/cancel", cancel_job),
]
