"""The public import path for users' workflows: ``from listener.workflow import Context, Event, workflow``.

The implementation lives in :mod:`listener.runtime.workflow`; this module only names what users write
against, so the runtime's inside can move without breaking anybody's workflow file."""

from listener.errors import Fenced, StepError
from listener.runtime.workflow import Context, Event, Policy, workflow

__all__ = ["Context", "Event", "Fenced", "Policy", "StepError", "workflow"]
