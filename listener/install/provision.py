"""``listener init`` (state schema migrations, publications, slot; safe to run twice), ``listener drop``."""

from __future__ import annotations

from psycopg import errors as pgerrors
from psycopg import sql

from listener.errors import INSUFFICIENT_PRIVILEGE, SlotInUseError, from_driver
from listener.install import failover
from listener.install.privileges import state_schema_fix
from listener.install.publications import compile_rules, ensure_publications, plan_pushdown
from listener.install.slots import ensure_slot
from listener.pg import conninfo
from listener.pg.conninfo import Conn
from listener.pg.lsn import format_lsn
from listener.queue import migrations
from listener.rules import pushdown
from listener.rules.catalog import TableInfo, read_tables, rule_tables
from listener.rules.compile import RuleSet
from listener.rules.config import Config

# ---------------------------------------------------------------------------------------------------------
# `listener init` and `listener drop`


def init(config: Config, source_dsn: str, state_dsn: str, *, keep: Config | None = None) -> list[str]:
    """Apply migrations, create/correct the publications, create the slot.  Returns what was done.

    The rules are compiled against the catalog first: a bad rule (``ConfigError``) changes nothing.
    ``keep``: a config whose rules still apply for a while (a reload before its marker): the publications
    then carry what either set of rules needs.  A reload is safe as: init(new, keep=old), write the
    marker, init(new) -- the narrowing lands in the WAL after the marker, where only the new rules match.
    A publication listener does not own is never altered: it must match ``config``'s rules (with
    ``keep`` too, so that a reload is refused before its marker), else ``PrerequisiteError`` gives the SQL
    that fixes it."""
    done: list[str] = []
    with conninfo.connection(source_dsn) as source:
        refusal = failover.refused(config, source.info.server_version)
        if refusal is not None:
            raise refusal
        rules, tables = compile_rules(source, config)
        exact = wide = plan_pushdown(source, config, rules, tables)
        if keep is not None:
            rules, tables = _compile_union(source, config, keep)
            wide = plan_pushdown(source, config, rules, tables)
        with conninfo.connection(state_dsn, what="the state database") as conn:
            try:
                for m in migrations.migrate(conn, config.state_schema):
                    done.append(f"applied migration {m.version:04d}_{m.name}")
            except pgerrors.InsufficientPrivilege as exc:
                raise from_driver(
                    exc,
                    f"cannot create the state schema {config.state_schema}",
                    fixes={INSUFFICIENT_PRIVILEGE: lambda: state_schema_fix(conn, config.state_schema)},
                ) from exc
            checkpoint = migrations.checkpoint(conn, config.state_schema, config.slot)
        done.extend(ensure_publications(source, wide, exact=exact))
        created = ensure_slot(
            source,
            config.slot,
            checkpoint=checkpoint,
            schema=config.state_schema,
            failover=failover.create_with_failover(config, source.info.server_version),
        )
        done.extend(created or failover.ensure_failover(source, source_dsn, config))
    return done


def _compile_union(conn: Conn, config: Config, keep: Config) -> tuple[RuleSet, dict[str, TableInfo | None]]:
    """The rules of both configs, for a publication that serves both."""
    both = [*config.rules, *keep.rules]
    tables, collation = read_tables(conn, rule_tables(both))
    rules = RuleSet(both, [*config.limits, *keep.limits], tables=tables, collation=collation)
    return rules, tables


def drop(config: Config, source_dsn: str, state_dsn: str | None = None) -> list[str]:
    """Drop the slot and both publications (the state schema and its events stay; with ``state_dsn``,
    the slot's checkpoint goes with the slot)."""
    done: list[str] = []
    with conninfo.connection(source_dsn) as conn:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", [config.slot]
        ).fetchone()
        if row is not None:
            if row[0] is not None:
                raise SlotInUseError(
                    f"replication slot {config.slot!r} is in use by PID {row[0]}",
                    hint="stop `listener run` first (or SELECT pg_terminate_backend(pid))",
                )
            conn.execute("SELECT pg_drop_replication_slot(%s)", [config.slot])
            done.append(f"dropped replication slot {config.slot}")
        for publication in (config.publication, pushdown.filtered_publication(config.publication)):
            row = conn.execute(
                "SELECT pg_has_role(pubowner, 'USAGE'), pubowner::regrole::text FROM pg_publication"
                " WHERE pubname = %s",
                [publication],
            ).fetchone()
            if row is None:
                continue
            statement = sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(publication))
            if row[0]:
                conn.execute(statement)
                done.append(f"dropped publication {publication}")
            else:
                done.append(
                    f"left publication {publication}: its owner is {row[1]}, who may remove it with "
                    f"{statement.as_string(conn)};"
                )
    if state_dsn is not None:
        with conninfo.connection(state_dsn, what="the state database") as conn:
            forgotten = migrations.forget_checkpoint(conn, config.state_schema, config.slot)
        if forgotten is not None:
            done.append(f"forgot the checkpoint of slot {config.slot} (at {format_lsn(forgotten)})")
    return done
