"""What the connecting role may do, each lack with the SQL that grants it (the REPLICATION attribute or
role, CREATE on the state schema), and :class:`CheckResult`, the outcome of one check.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from listener.pg import managed
from listener.pg.conninfo import Conn


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    warning: bool = False  # ok, but worth knowing


_SCHEMA_ACCESS = """
SELECT current_user, current_database(), n.oid IS NOT NULL,
       coalesce(has_schema_privilege(n.oid, 'CREATE') AND has_schema_privilege(n.oid, 'USAGE'), false),
       has_database_privilege(current_database(), 'CREATE')
FROM (SELECT 1) AS one LEFT JOIN pg_namespace n ON n.nspname = %s
"""


def state_schema_fix(conn: Conn, schema: str) -> str:
    """`listener init` when the role may create (or add to) the state schema, else the SQL a DBA runs:
    listener needs its own schema, never rights on the application's."""
    row = conn.execute(_SCHEMA_ACCESS, [schema]).fetchone()
    assert row is not None
    role, database, exists, may_add, may_create = row
    who, ident = sql.Identifier(role).as_string(conn), sql.Identifier(schema).as_string(conn)
    if exists and not may_add:
        return f"GRANT USAGE, CREATE ON SCHEMA {ident} TO {who};  -- then `listener init`"
    if not exists and not may_create:
        return (
            f"CREATE SCHEMA {ident} AUTHORIZATION {who};  -- then `listener init`; or give listener its own "
            f"state database (`state_dsn:`), since role {role} lacks CREATE on database {database}"
        )
    return "listener init"


_REPLICATION = """
SELECT current_user, rolreplication OR rolsuper,
       coalesce(pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = %s), 'MEMBER'), false)
FROM pg_roles WHERE rolname = current_user
"""


def check_replication(conn: Conn, service: managed.Service) -> CheckResult:
    """The REPLICATION attribute, or on a service that grants replication by a role, that role."""
    row = conn.execute(_REPLICATION, [service.replication_role]).fetchone()
    assert row is not None
    role, attribute, member = row
    if attribute or member:
        return CheckResult("replication privilege", True, f"role {role} may replicate")
    who = sql.Identifier(role).as_string(conn)
    if service.replication_role is not None:
        return CheckResult(
            "replication privilege",
            False,
            f"role {role} is not a member of {service.replication_role}, which grants replication on "
            f"{service.name}",
            f"GRANT {sql.Identifier(service.replication_role).as_string(conn)} TO {who};",
        )
    return CheckResult(
        "replication privilege",
        False,
        f"role {role} lacks the REPLICATION attribute",
        f"ALTER ROLE {who} REPLICATION;",
    )
