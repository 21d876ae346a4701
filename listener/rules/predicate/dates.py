"""Date, timestamp and interval operators (date.c, timestamp.c): calendar arithmetic on the integer
values of :mod:`listener.rules.predicate.types`, infinities and range checks as in PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from listener.rules.predicate.errors import DATETIME_OVERFLOW, DIVISION_BY_ZERO, EvaluationError
from listener.rules.predicate.types import (
    DATEVAL_NOBEGIN,
    DATEVAL_NOEND,
    DT_NOBEGIN,
    DT_NOEND,
    END_TIMESTAMP,
    INTERVAL_NOBEGIN,
    INTERVAL_NOEND,
    POSTGRES_EPOCH_JDATE,
    TIMESTAMP_END_DAYS,
    USECS_PER_DAY,
    Interval,
    date2j,
    date_out_of_range,
    days_in_month,
    interval_checked,
    j2date,
    ts_out_of_range,
    valid_date,
    valid_julian,
    valid_timestamp,
)

# ---------------------------------------------------------------------------- dates, times, intervals


def _checked_timestamp(t: int) -> int:
    if not valid_timestamp(t):
        raise ts_out_of_range()
    return t


def add_interval(ts: int, iv: Interval) -> int:
    """timestamp[tz] + interval (timestamp_pl_interval): calendar months first (clamping the day), then
    days, then time, each step checked against the timestamp range.  An infinite timestamp stays; an
    infinite interval makes the timestamp infinite (the opposite infinity is out of range)."""
    if iv in (INTERVAL_NOBEGIN, INTERVAL_NOEND):
        if ts == (DT_NOEND if iv == INTERVAL_NOBEGIN else DT_NOBEGIN):
            raise ts_out_of_range()
        return DT_NOBEGIN if iv == INTERVAL_NOBEGIN else DT_NOEND
    if ts in (DT_NOBEGIN, DT_NOEND):
        return ts
    months, days, micros = iv
    if months:
        day_number, time = divmod(ts, USECS_PER_DAY)
        year, month, day = j2date(day_number + POSTGRES_EPOCH_JDATE)
        year, month0 = divmod(year * 12 + month - 1 + months, 12)
        if not valid_julian(year, month0 + 1):
            raise ts_out_of_range()
        day = min(day, days_in_month(year, month0 + 1))
        ts = _checked_timestamp((date2j(year, month0 + 1, day) - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY + time)
    if days:
        ts = _checked_timestamp(ts + days * USECS_PER_DAY)
    if micros:
        ts = _checked_timestamp(ts + micros)
    return ts


def _infinite_interval(iv: Interval) -> bool:
    return iv in (INTERVAL_NOBEGIN, INTERVAL_NOEND)


def interval_neg(iv: Interval) -> Interval:
    if _infinite_interval(iv):
        return INTERVAL_NOEND if iv == INTERVAL_NOBEGIN else INTERVAL_NOBEGIN
    return interval_checked(-iv.months, -iv.days, -iv.micros)


def sub_interval(ts: int, iv: Interval) -> int:
    return add_interval(ts, interval_neg(iv))  # timestamp_mi_interval


def interval_add(a: Interval, b: Interval) -> Interval:
    if _infinite_interval(a) or _infinite_interval(b):  # interval_pl: opposite infinities are an error
        if _infinite_interval(a) and _infinite_interval(b) and a != b:
            raise EvaluationError("interval out of range", DATETIME_OVERFLOW)
        return a if _infinite_interval(a) else b
    return interval_checked(a.months + b.months, a.days + b.days, a.micros + b.micros)


def interval_sub(a: Interval, b: Interval) -> Interval:
    if _infinite_interval(a) or _infinite_interval(b):  # interval_mi: equal infinities are an error
        if a == b:
            raise EvaluationError("interval out of range", DATETIME_OVERFLOW)
        return a if _infinite_interval(a) else interval_neg(b)
    return interval_checked(a.months - b.months, a.days - b.days, a.micros - b.micros)


def _interval_out_of_range() -> EvaluationError:
    return EvaluationError("interval out of range", DATETIME_OVERFLOW)


def _tsround(x: float) -> float:
    return round(x * 1_000_000.0) / 1_000_000.0  # TSROUND: rint to microsecond precision


def _fits_int32(x: float) -> bool:
    return -(2.0**31) <= x < 2.0**31  # FLOAT8_FITS_IN_INT32 (false for NaN)


def _add_int32(a: int, b: int) -> int:
    if not -(2**31) <= a + b < 2**31:
        raise _interval_out_of_range()
    return a + b


def _interval_scaled(iv: Interval, scale: Callable[[float], float]) -> Interval:
    """interval_mul / interval_div on a finite interval: each field scaled in float8, the fractions of
    months and days cascaded down (a month is 30 days, a day 86400 seconds), never up."""
    month_product, day_product = scale(float(iv.months)), scale(float(iv.days))
    if not (_fits_int32(month_product) and _fits_int32(day_product)):
        raise _interval_out_of_range()
    months, days = int(month_product), int(day_product)
    month_remainder_days = _tsround((month_product - months) * 30)
    sec_remainder = _tsround((day_product - days + month_remainder_days - int(month_remainder_days)) * 86400)
    if abs(sec_remainder) >= 86400:
        days = _add_int32(days, int(sec_remainder / 86400))
        sec_remainder -= int(sec_remainder / 86400) * 86400
    days = _add_int32(days, int(month_remainder_days))
    time = scale(float(iv.micros)) + sec_remainder * 1_000_000.0
    if not math.isfinite(time) or not -(2.0**63) <= round(time) < 2.0**63:
        raise _interval_out_of_range()
    result = Interval(months, days, round(time))
    if _infinite_interval(result):
        raise _interval_out_of_range()
    return result


def interval_mul(iv: Interval, factor: float) -> Interval:
    """interval * float8 (interval_mul): 0 * infinity and NaN are out of range."""
    if math.isnan(factor):
        raise _interval_out_of_range()
    if _infinite_interval(iv):
        if factor == 0.0:
            raise _interval_out_of_range()
        return interval_neg(iv) if factor < 0.0 else iv
    if math.isinf(factor):
        key = interval_key(iv)
        if key == 0:
            raise _interval_out_of_range()
        return INTERVAL_NOBEGIN if (factor < 0) != (key < 0) else INTERVAL_NOEND
    return _interval_scaled(iv, lambda x: x * factor)


def interval_div(iv: Interval, factor: float) -> Interval:
    """interval / float8 (interval_div): division by zero; infinity / infinity is out of range."""
    if factor == 0.0:
        raise EvaluationError("division by zero", DIVISION_BY_ZERO)
    if math.isnan(factor):
        raise _interval_out_of_range()
    if _infinite_interval(iv):
        if math.isinf(factor):
            raise _interval_out_of_range()
        return interval_neg(iv) if factor < 0.0 else iv
    return _interval_scaled(iv, lambda x: x / factor)


def ts_diff(a: int, b: int) -> Interval:
    """timestamp - timestamp: microseconds, then justify_hours (whole days out, same sign)."""
    if a in (DT_NOBEGIN, DT_NOEND) or b in (DT_NOBEGIN, DT_NOEND):  # timestamp_mi
        if a == b:
            raise EvaluationError("interval out of range", DATETIME_OVERFLOW)
        return INTERVAL_NOBEGIN if a == DT_NOBEGIN or b == DT_NOEND else INTERVAL_NOEND
    micros = a - b
    if not -(2**63) <= micros < 2**63:
        raise EvaluationError("interval out of range", DATETIME_OVERFLOW)
    days = abs(micros) // USECS_PER_DAY * (1 if micros >= 0 else -1)  # TMODULO truncates toward zero
    micros -= days * USECS_PER_DAY
    return interval_checked(0, days, micros)


def _date_plus_days(d: int, n: int) -> int:
    if d in (DATEVAL_NOBEGIN, DATEVAL_NOEND):
        return d
    result = d + n
    if not valid_date(result):
        raise date_out_of_range()
    return result


def date_pli(d: int, n: int) -> int:
    return _date_plus_days(d, n)


def date_mii(d: int, n: int) -> int:
    return _date_plus_days(d, -n)


def date_mi(a: int, b: int) -> int:
    if a in (DATEVAL_NOBEGIN, DATEVAL_NOEND) or b in (DATEVAL_NOBEGIN, DATEVAL_NOEND):
        raise EvaluationError("cannot subtract infinite dates", DATETIME_OVERFLOW)
    return a - b


def date_ts(d: int) -> int:
    """date2timestamp: the infinities map to the timestamp's; a date past 294276 AD does not convert."""
    if d == DATEVAL_NOBEGIN:
        return DT_NOBEGIN
    if d == DATEVAL_NOEND:
        return DT_NOEND
    if d >= TIMESTAMP_END_DAYS:
        raise EvaluationError("date out of range for timestamp", DATETIME_OVERFLOW)
    return d * USECS_PER_DAY


def date_ts_compared(d: int) -> int:
    """date2timestamp_opt_overflow, as date-vs-timestamp comparisons use it: a date past the timestamp
    range is later than every finite timestamp and earlier than infinity, never an error."""
    if DATEVAL_NOBEGIN < d < DATEVAL_NOEND and d >= TIMESTAMP_END_DAYS:
        return END_TIMESTAMP
    return date_ts(d)


def ts_date(t: int) -> int:
    if t == DT_NOBEGIN:
        return DATEVAL_NOBEGIN
    if t == DT_NOEND:
        return DATEVAL_NOEND
    return t // USECS_PER_DAY  # the day it falls in (floor)


def interval_key(iv: Interval) -> int:
    """interval_cmp_value: a month counts 30 days, a day 24 hours."""
    return (iv.months * 30 + iv.days) * USECS_PER_DAY + iv.micros
