"""Support tickets: triage new tickets and follow escalations."""

from __future__ import annotations

from listener.workflow import Context

from .onboarding import ACTIONS


async def triage(ctx: Context) -> None:
    """A new ticket: classify it (stand-in for an LLM call)."""
    ticket = ctx.event.new or {}
    subject = str(ticket.get("subject", ""))
    label = "bug" if "error" in subject.lower() or "crash" in subject.lower() else "question"
    ACTIONS.append(f"ticket #{ticket.get('id')} triaged as {label}")


async def escalated(ctx: Context) -> None:
    """A ticket changed: note its new priority (old values come with REPLICA IDENTITY FULL)."""
    new, old = ctx.event.new or {}, ctx.event.old or {}
    ACTIONS.append(f"ticket #{new.get('id')} priority {old.get('priority', '?')} -> {new.get('priority')}")
