"""Support tickets summarized by an LLM-like call, then written back (README's runtime example)."""

from __future__ import annotations

import asyncio

from listener.workflow import Context, workflow

LLM_SECONDS = 0.5  # a stand-in for a slow, costly model call


async def call_llm(text: str, idempotency_key: str) -> dict[str, str]:
    await asyncio.sleep(
        LLM_SECONDS
    )  # a real one sends idempotency_key as the provider's Idempotency-Key header
    return {"summary": text[:80]}


@workflow(max_attempts=5, timeout=600)  # retries with exponential backoff and jitter; a run timeout
async def summarize(ctx: Context) -> None:
    ticket = ctx.event.new or {}  # {"id": 42, "tenant_id": "acme", "body": "...", ...}
    result = await ctx.step(  # runs once: recorded, then replayed on a retry or a resume
        "summarize", call_llm, ticket["body"], ctx.step_key("summarize"), retries=2, timeout=60
    )

    async def save() -> None:
        async with ctx.transaction() as conn:  # commits together with the step's record
            await conn.execute(
                "UPDATE public.tickets SET summary = $1 WHERE id = $2", result["summary"], ticket["id"]
            )

    await ctx.step("save", save)
