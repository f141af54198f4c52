"""moto's S3, Glue and S3 Tables server, with the Glue compare-and-swap that moto leaves out.

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


# S3 Tables: moto checks UpdateTableMetadataLocation's versionToken, but not atomically with
# the update (two writers holding the same token could both pass), and its answer names the
# namespace as a string and the ARN as `tableArn`, where the service's API (and so every AWS
# SDK parsing it) has a list of strings and `tableARN`. Both fixed here.
import json

from moto.s3tables import models as s3tables_models
from moto.s3tables import responses as s3tables_responses

_s3tables_lock = threading.Lock()
_original_update_metadata_location = s3tables_models.Table.update_metadata_location


def _update_metadata_location_atomic(self, metadata_location, version_token):
    with _s3tables_lock:
        return _original_update_metadata_location(self, metadata_location, version_token)


_original_update_response = s3tables_responses.S3TablesResponse.update_table_metadata_location


def _update_table_metadata_location_response(self):
    status, headers, body = _original_update_response(self)
    answer = json.loads(body)
    if isinstance(answer.get("namespace"), str):
        answer["namespace"] = [answer["namespace"]]
    if "tableArn" in answer:
        answer["tableARN"] = answer.pop("tableArn")
    return status, headers, json.dumps(answer)


s3tables_models.Table.update_metadata_location = _update_metadata_location_atomic
s3tables_responses.S3TablesResponse.update_table_metadata_location = (
    _update_table_metadata_location_response
)


if __name__ == "__main__":
    from moto.server import main

    main()
