"""listener: runs beside PostgreSQL and turns row changes into durable, exactly-once workflow runs."""

__version__ = "0.1.0"
