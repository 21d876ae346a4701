"""What a workflow function sees: its event, in a context object.

A workflow is a Python function referenced as ``module.path:function``; it takes one argument, the
:class:`Context`, and may be ``async`` or plain.  (The durable runtime — memoized steps, transactions —
extends the context; the event part is stable.)
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from listener.errors import ConfigError

Workflow = Callable[["Context"], Awaitable[Any] | Any]


@dataclass(frozen=True, slots=True)
class Event:
    """One workflow event, as stored in the queue."""

    id: int
    idempotency_key: str
    rule: str
    workflow: str
    op: str | None
    table: str | None
    lsn: str | None
    commit_lsn: str | None
    xid: int | None
    commit_time: datetime | None
    new: dict[str, Any] | None
    old: dict[str, Any] | None
    unchanged_toast: tuple[str, ...]
    attempt: int

    @classmethod
    def from_row(cls, row: Any) -> Event:
        payload = json.loads(row["payload"])
        return cls(
            id=row["id"],
            idempotency_key=row["idempotency_key"],
            rule=row["rule"],
            workflow=row["workflow"],
            op=row["op"],
            table=row["table_name"],
            lsn=row["lsn"],
            commit_lsn=row["commit_lsn"],
            xid=row["xid"],
            commit_time=row["commit_time"],
            new=payload.get("new"),
            old=payload.get("old"),
            unchanged_toast=tuple(payload.get("unchanged_toast", ())),
            attempt=row["attempts"],
        )


@dataclass(slots=True)
class Context:
    """Passed to every workflow function."""

    event: Event


_cache: dict[str, Workflow] = {}


def resolve(reference: str, *, rule: str | None = None) -> Workflow:
    """Import ``module.path:function``; a clear ConfigError when it does not resolve."""
    cached = _cache.get(reference)
    if cached is not None:
        return cached
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"workflow reference {reference!r} is not of the form module.path:function", rule=rule
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"workflow {reference!r}: cannot import module {module_name!r}: {exc}",
            rule=rule,
            hint="check the module path and that it is importable from the working directory (PYTHONPATH)",
        ) from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ConfigError(
            f"workflow {reference!r}: module {module_name!r} has no function {attr!r}",
            rule=rule,
            hint=f"define `async def {attr}(ctx)` in {module_name}",
        )
    _cache[reference] = fn
    return fn  # type: ignore[no-any-return]


async def call(fn: Workflow, ctx: Context) -> Any:
    result = fn(ctx)
    if inspect.isawaitable(result):
        return await result
    return result
