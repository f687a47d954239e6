"""The API's wire format: run, thread, step and list objects, and error bodies."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from exporter.statuses import TERMINAL

JSON = dict[str, Any]

ERROR_MESSAGES: dict[str, str] = {
    "server_error": "Sorry, something went wrong.",
    "rate_limit_exceeded": "You exceeded your current quota, please check your plan and billing details.",
    "invalid_prompt": "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
}
INSTRUCTIONS = "You are a helpful assistant. Use the provided functions when they help."
TOOLS: list[JSON] = [
    {"type": "code_interpreter"},
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Look up an order by its id.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"],
            },
            "strict": False,
        },
    },
]


class ApiError(Exception):
    """An error answered in the API's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> JSON:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Run:
    """One run's full state. `plan` is the list of (status, seconds) stints it goes through."""

    id: str
    thread_id: str
    assistant_id: str
    model: str
    created_at: int
    expires_at: int
    plan: list[tuple[str, float]]
    error_code: str | None = None  # shown once failed
    incomplete_reason: str | None = None  # shown once incomplete
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    idx: int = 0
    stint_start: float = 0.0
    status: str = "queued"
    started_at: int | None = None
    cancelled_at: int | None = None
    failed_at: int | None = None
    completed_at: int | None = None
    ended_at: int | None = None
    action_count: int = 0
    tool_calls: list[JSON] | None = None
    history: list[tuple[str, float]] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def usage(self) -> tuple[int, int]:
        # A run that never started consumed nothing.
        return (0, 0) if self.started_at is None else (self.prompt_tokens, self.completion_tokens)


def short_hash(*parts: object, length: int = 24) -> str:
    """A deterministic id-like token (letters and digits)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    n = int.from_bytes(digest, "big")
    out = []
    for _ in range(length):
        n, r = divmod(n, len(alphabet))
        out.append(alphabet[r])
    return "".join(out)


def tool_calls_for(run: Run) -> list[JSON]:
    call_id = "call_" + short_hash(run.id, run.action_count)
    args = '{"order_id": "' + short_hash(run.id, "order", run.action_count, length=8) + '"}'
    return [{"id": call_id, "type": "function", "function": {"name": "lookup_order", "arguments": args}}]


def usage_object(prompt: int, completion: int) -> JSON:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def render_run(run: Run) -> JSON:
    """The run object exactly as GET /threads/{id}/runs/{id} returns it."""
    status = run.status
    usage: JSON | None = None
    if run.terminal:
        prompt, completion = run.usage()
        usage = usage_object(prompt, completion)
    required_action: JSON | None = None
    if status == "requires_action" and run.tool_calls is not None:
        required_action = {
            "type": "submit_tool_outputs",
            "submit_tool_outputs": {"tool_calls": [dict(c) for c in run.tool_calls]},
        }
    last_error: JSON | None = None
    if status == "failed":
        code = run.error_code or "server_error"
        last_error = {"code": code, "message": ERROR_MESSAGES[code]}
    incomplete: JSON | None = None
    if status == "incomplete":
        incomplete = {"reason": run.incomplete_reason or "max_completion_tokens"}
    # The API clears expires_at once a run is terminal; an expired run keeps it (the moment it expired).
    expires_at = run.expires_at if (not run.terminal or status == "expired") else None
    return {
        "id": run.id,
        "object": "thread.run",
        "created_at": run.created_at,
        "assistant_id": run.assistant_id,
        "thread_id": run.thread_id,
        "status": status,
        "started_at": run.started_at,
        "expires_at": expires_at,
        "cancelled_at": run.cancelled_at,
        "failed_at": run.failed_at,
        "completed_at": run.completed_at,
        "required_action": required_action,
        "last_error": last_error,
        "model": run.model,
        "instructions": INSTRUCTIONS,
        "tools": [_copy_tool(t) for t in TOOLS],
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "max_completion_tokens": run.max_completion_tokens,
        "max_prompt_tokens": run.max_prompt_tokens,
        "truncation_strategy": {"type": "auto", "last_messages": None},
        "incomplete_details": incomplete,
        "usage": usage,
        "response_format": "auto",
        "tool_choice": "auto",
        "parallel_tool_calls": True,
    }


def _copy_tool(tool: JSON) -> JSON:
    if "function" not in tool:
        return dict(tool)
    return {"type": tool["type"], "function": dict(tool["function"])}


_STEP_STATUS = {
    "in_progress": "in_progress",
    "requires_action": "in_progress",
    "cancelling": "in_progress",
    "completed": "completed",
    "incomplete": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
    "expired": "expired",
}


def render_steps(run: Run) -> list[JSON]:
    """One message_creation step once the run has started (enough for clients that peek at steps)."""
    if run.started_at is None:
        return []
    status = _STEP_STATUS.get(run.status, "in_progress")
    ended = run.ended_at
    prompt, completion = run.usage()
    step_error: JSON | None = None
    if status == "failed":
        code = "rate_limit_exceeded" if run.error_code == "rate_limit_exceeded" else "server_error"
        step_error = {"code": code, "message": ERROR_MESSAGES[code]}
    return [
        {
            "id": "step_" + short_hash(run.id, "step"),
            "object": "thread.run.step",
            "created_at": run.started_at,
            "assistant_id": run.assistant_id,
            "thread_id": run.thread_id,
            "run_id": run.id,
            "type": "message_creation",
            "status": status,
            "step_details": {
                "type": "message_creation",
                "message_creation": {"message_id": "msg_" + short_hash(run.id, "msg")},
            },
            "last_error": step_error,
            "expired_at": ended if status == "expired" else None,
            "cancelled_at": ended if status == "cancelled" else None,
            "failed_at": ended if status == "failed" else None,
            "completed_at": ended if status == "completed" else None,
            "metadata": {},
            "usage": None if status == "in_progress" else usage_object(prompt, completion),
        }
    ]


def render_thread(thread_id: str, created_at: int, metadata: dict[str, str] | None = None) -> JSON:
    return {
        "id": thread_id,
        "object": "thread",
        "created_at": created_at,
        "metadata": dict(metadata or {}),
        "tool_resources": {"code_interpreter": {"file_ids": []}},
    }


def list_page(data: list[Any], has_more: bool) -> JSON:
    """A list response. The API sends null first_id/last_id for an empty page."""
    first = data[0].get("id") if data and isinstance(data[0], dict) else None
    last = data[-1].get("id") if data and isinstance(data[-1], dict) else None
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more}


def foundry_page(data: list[Any], has_more: bool) -> JSON:
    """Foundry's list envelope: no object, no first_id, and last_id null on the last page.

    The official SDK's pager follows last_id and ignores has_more, so last_id must be null to stop it.
    """
    last = data[-1].get("id") if has_more and data and isinstance(data[-1], dict) else None
    return {"data": data, "last_id": last, "has_more": has_more}
