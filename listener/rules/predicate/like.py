"""LIKE and ILIKE (like.c, like_match.c) and the ASCII-only lower()/upper() of the "C" ctype."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Final

from listener.rules.predicate.errors import INVALID_ESCAPE, EvaluationError

# ------------------------------------------------------------------------------------------------- LIKE

_ASCII_LOWER: Final = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
_ASCII_UPPER: Final = {c + 32: c for c in range(ord("A"), ord("Z") + 1)}


def ascii_lower(s: str) -> str:
    """lower() under the "C" ctype: only ASCII letters change."""
    return s.lower() if s.isascii() else s.translate(_ASCII_LOWER)


def ascii_upper(s: str) -> str:
    return s.upper() if s.isascii() else s.translate(_ASCII_UPPER)


def like_escape(pattern: str, escape: str) -> str:
    """do_like_escape: rewrite a pattern with a custom escape character to one using backslash."""
    if escape == "":
        return pattern.replace("\\", "\\\\")
    if len(escape) != 1:
        raise EvaluationError(
            "invalid escape string", INVALID_ESCAPE, hint="Escape string must be empty or one character."
        )
    if escape == "\\":
        return pattern
    out = []
    after_escape = False
    for ch in pattern:
        if ch == escape and not after_escape:
            out.append("\\")
            after_escape = True
        elif ch == "\\":
            out.append("\\" if after_escape else "\\\\")
            after_escape = False
        else:
            out.append(ch)
            after_escape = False
    return "".join(out)


_LIKE_ABORT: Final = 2


def _match_text(t: str, p: str) -> int:
    """MatchText (like_match.c) over characters: 1 match, 0 no match, 2 abort (no later start can match).
    Used for patterns that end in an escape character, where PostgreSQL raises only when it gets there."""
    ti = pi = 0
    while ti < len(t) and pi < len(p):
        c = p[pi]
        if c == "\\":
            pi += 1
            if pi >= len(p):
                raise EvaluationError("LIKE pattern must not end with escape character", INVALID_ESCAPE)
            if p[pi] != t[ti]:
                return 0
        elif c == "%":
            pi += 1
            while pi < len(p):
                if p[pi] == "%":
                    pi += 1
                elif p[pi] == "_":
                    if ti >= len(t):
                        return _LIKE_ABORT
                    ti += 1
                    pi += 1
                else:
                    break
            if pi >= len(p):
                return 1
            if p[pi] == "\\":
                if pi + 1 >= len(p):
                    raise EvaluationError("LIKE pattern must not end with escape character", INVALID_ESCAPE)
                first = p[pi + 1]
            else:
                first = p[pi]
            while ti < len(t):
                if t[ti] == first:
                    r = _match_text(t[ti:], p[pi:])
                    if r != 0:
                        return r
                ti += 1
            return _LIKE_ABORT
        elif c != "_" and c != t[ti]:
            return 0
        ti += 1
        pi += 1
    if ti < len(t):
        return 0
    while pi < len(p) and p[pi] == "%":
        pi += 1
    return 1 if pi >= len(p) else _LIKE_ABORT


@lru_cache(maxsize=512)
def like_matcher(pattern: str) -> Callable[[str], bool]:
    """A matcher for a backslash-escaped LIKE pattern: a regular expression where that is exact and
    cheap, else the port of MatchText."""
    parts: list[str] = []
    i = 0
    exact = True
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 >= len(pattern):
                exact = False
                break
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "%":
            if not parts or parts[-1] != ".*":
                parts.append(".*")
        elif c == "_":
            parts.append(".")
        else:
            parts.append(re.escape(c))
        i += 1
    # many wildcards make backtracking regular expressions slow; MatchText stays polynomial
    if exact and parts.count(".*") <= 3:
        match = re.compile("".join(parts), re.DOTALL).fullmatch
        return lambda s: match(s) is not None
    return lambda s: _match_text(s, pattern) == 1
