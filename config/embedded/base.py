"""Django's PostgreSQL backend, starting the embedded server before the first connection."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.backends.postgresql import base

from config.embedded import ensure_postgres


class DatabaseWrapper(base.DatabaseWrapper):
    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        pgdata = settings.EMBEDDED_POSTGRES_DIR
        assert pgdata is not None, "ENGINE config.embedded is set only without DATABASE_URL"
        # The test runner connects to the "postgres" maintenance database to create test_autoret;
        # the project database only needs to exist for real connections.
        dbname = params.get("dbname") or self.settings_dict["NAME"]
        address = ensure_postgres(pgdata, "postgres" if dbname == "postgres" else dbname)
        params["host"] = address.socket_dir
        params["port"] = address.port
        return params
