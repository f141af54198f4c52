"""moto's S3 + Glue server, with the Glue compare-and-swap that moto leaves out.

AWS Glue's UpdateTable takes an optional VersionId: when it is given and is not the table's
current version, Glue refuses the update with ConcurrentModificationException. lakewriter's
catalog commits rely on that check (DESIGN.md, invariant 9), and moto ignores it, so a test of
commit conflicts against plain moto would prove nothing. This wrapper adds the check, atomically
with the update, then starts moto's ordinary server with the same arguments.
"""

import threading

from moto.core.exceptions import JsonRESTError
from moto.glue import responses as glue_responses
from moto.glue.models import GlueBackend


class ConcurrentModificationException(JsonRESTError):
    code = 400

    def __init__(self, message: str) -> None:
        super().__init__("ConcurrentModificationException", message)


_commit_lock = threading.Lock()
_original_update_table = GlueBackend.update_table


def _update_table_checked(self, database_name, table_name, table_input, version_id=None):
    with _commit_lock:
        table = self.get_table(database_name, table_name)
        current = str(table._current_version)
        if version_id is not None and str(version_id) != current:
            raise ConcurrentModificationException(
                f"Update table failed due to concurrent modifications: "
                f"table {database_name}.{table_name} is at version {current}, "
                f"the update expected version {version_id}"
            )
        _original_update_table(self, database_name, table_name, table_input)


def _update_table_response(self):
    database_name = self.parameters.get("DatabaseName")
    table_input = self.parameters.get("TableInput")
    table_name = table_input.get("Name")
    version_id = self.parameters.get("VersionId")
    _update_table_checked(
        self.glue_backend, database_name, table_name, table_input, version_id
    )
    return glue_responses.EmptyResult()


GlueBackend.update_table = _update_table_checked
glue_responses.GlueResponse.update_table = _update_table_response


if __name__ == "__main__":
    from moto.server import main

    main()
