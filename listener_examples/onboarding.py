"""Onboarding: react to new users."""

from __future__ import annotations

import asyncio

from listener.workflow import Context

# What the workflows did, for `listener demo` to show (a real workflow would call an LLM, send mail...).
ACTIONS: list[str] = []


async def welcome(ctx: Context) -> None:
    """A new user: draft a welcome message (stand-in for an LLM call) and record it."""
    user = ctx.event.new or {}
    await asyncio.sleep(0)  # a real workflow awaits its LLM or mail provider here
    ACTIONS.append(f"welcome email drafted for {user.get('email')}")
