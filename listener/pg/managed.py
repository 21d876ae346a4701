"""Managed PostgreSQL services: which one a connection is on, and how its operators change what `listener
check` asks for.  On them ``ALTER SYSTEM`` is refused and the REPLICATION attribute is granted their own
way, so a fix line says where the setting lives (parameter group, database flag, server parameter,
project setting) instead.

Each service is recognised by what its own documentation names: a setting only it defines
(``rds.logical_replication``, ``cloudsql.logical_decoding``, ``azure.extensions``) or a role only it
creates (``neon_superuser``).  See README's "Managed PostgreSQL services" for the sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

# Recognised by a setting (current_setting(..., missing_ok)) or a role of the service.
_DETECT = """
SELECT current_setting('rds.logical_replication', true) IS NOT NULL,
       current_setting('cloudsql.logical_decoding', true) IS NOT NULL,
       current_setting('azure.extensions', true) IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'neon_superuser')
"""


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    logical: str  # how to turn on logical decoding (wal_level = logical)
    parameter: str  # how to change a server parameter, "{name}" and "{value}" to fill in
    replication_role: str | None = None  # a role granting replication, instead of the attribute

    def set_parameter(self, name: str, value: object) -> str:
        return self.parameter.format(name=name, value=value)


RDS = Service(
    "Amazon RDS / Aurora",
    "set rds.logical_replication = 1 in the instance's DB parameter group (Aurora: the DB cluster parameter "
    "group), then reboot; wal_level becomes logical",
    "set {name} = {value} in the DB parameter group (Aurora: the DB cluster parameter group), then reboot",
    replication_role="rds_replication",
)
CLOUD_SQL = Service(
    "Google Cloud SQL",
    "set the database flag cloudsql.logical_decoding = on (console: Edit, Flags; or gcloud sql instances "
    "patch INSTANCE --database-flags=..., which replaces the whole list), then restart the instance",
    "set the database flag {name} = {value} (console: Edit, Flags), then restart the instance",
)
AZURE = Service(
    "Azure Database for PostgreSQL",
    "set the server parameter wal_level = logical (portal: Server parameters; or az postgres flexible-server "
    "parameter set --name wal_level --value logical), then restart the server",
    "set the server parameter {name} = {value} (portal: Server parameters), then restart the server",
)
NEON = Service(
    "Neon",
    "enable logical replication in the Neon Console: Project settings (it cannot be turned off again and "
    "restarts the project's computes)",
    "{name} is managed by Neon: ask Neon support to set {name} = {value}",
)
SELF_HOSTED = Service(
    "PostgreSQL",
    "ALTER SYSTEM SET wal_level = logical;  -- then restart PostgreSQL",
    "ALTER SYSTEM SET {name} = {value};  -- then restart PostgreSQL",
)


def detect(conn: psycopg.Connection[Any]) -> Service:
    """The service ``conn`` is on (:data:`SELF_HOSTED` when none is recognised)."""
    row = conn.execute(_DETECT).fetchone()
    assert row is not None
    rds, cloud_sql, azure, neon = row
    if rds:
        return RDS
    if cloud_sql:
        return CLOUD_SQL
    if azure:
        return AZURE
    if neon:
        return NEON
    return SELF_HOSTED
