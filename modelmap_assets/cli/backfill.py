"""Backfills of model batches (and a sensor's on/off) through the Dagster webserver's GraphQL API.

The Dagster CLI cannot add dynamic partitions, so `modelmap backfill KEY...` registers the keys
in the `models` partitions (in the instance of $DAGSTER_HOME, which the webserver and daemon
share) and then asks the webserver for an asset backfill (`launchPartitionBackfill`), as the
UI's "Materialize" dialog does. The backfill covers the per-model assets of those partitions;
the assets over all models are left to declarative automation, which refreshes them once,
after the last model. (Were they in the backfill too, two mechanisms would build the map: a
run killed mid-backfill marks its partition and everything downstream of it failed in the
backfill's bookkeeping, which releases automation to build the map while the backfill, after
the retry succeeds, builds it again.)
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message partitionKeys }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}
"""

STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status numPartitions }
    ... on PythonError { message }
    ... on BackfillNotFoundError { message }
  }
}
"""

DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


class BackfillError(RuntimeError):
    """The webserver refused or could not be reached; the message says which and why."""


def graphql(url: str, query: str, variables: dict, timeout: float = 60) -> dict:
    """POST one GraphQL request to `<url>/graphql`; its `data`, or a BackfillError."""
    request = urllib.request.Request(
        url.rstrip("/") + "/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except (urllib.error.URLError, OSError) as err:
        raise BackfillError(
            f"cannot reach the Dagster webserver at {url} ({err}); start it with `make ui`"
        ) from err
    if body.get("errors"):
        raise BackfillError(f"{url}: GraphQL error: {body['errors'][0].get('message')}")
    return body["data"]


def launch_backfill(
    url: str, keys: Sequence[str], assets: Sequence[str], title: str | None = None
) -> str:
    """Launch an asset backfill of `assets` over the `keys` partitions; returns its id."""
    params = {
        "partitionNames": list(keys),
        "assetSelection": [{"path": [a]} for a in assets],
        "fromFailure": False,
        "title": title or f"modelmap: {len(keys)} models",
    }
    result = graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise BackfillError(f"backfill refused ({result['__typename']}): {result.get('message')}")
    return result["backfillId"]


def backfill_status(url: str, backfill_id: str) -> str:
    result = graphql(url, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    if result["__typename"] != "PartitionBackfill":
        raise BackfillError(f"backfill {backfill_id}: {result.get('message')}")
    return result["status"]


def wait_for_backfill(
    url: str, backfill_id: str, timeout_s: float = 3600, poll_s: float = 5, log=print
) -> str:
    """Poll until the backfill ends; returns its final status."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        status = backfill_status(url, backfill_id)
        if status != last:
            log(f"backfill {backfill_id}: {status}")
            last = status
        if status in DONE:
            return status
        time.sleep(poll_s)
    raise BackfillError(f"backfill {backfill_id} still {last} after {timeout_s:.0f} s")


REPOSITORIES = """
query Repositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } } }
    ... on PythonError { message }
  }
}
"""

SENSOR = """
mutation Sensor($selector: SensorSelector!) {
  %s(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on SensorNotFoundError { message }
  }
}
"""


def set_sensor(url: str, name: str, running: bool) -> str:
    """Turn a sensor on (`startSensor`) or back to its default, off (`resetSensor`), as the
    UI's toggle does; returns its status."""
    repos = graphql(url, REPOSITORIES, {})["repositoriesOrError"]
    if repos["__typename"] != "RepositoryConnection" or not repos["nodes"]:
        raise BackfillError(f"{url}: no code location loaded ({repos.get('message')})")
    repo = repos["nodes"][0]
    selector = {
        "repositoryName": repo["name"],
        "repositoryLocationName": repo["location"]["name"],
        "sensorName": name,
    }
    mutation = "startSensor" if running else "resetSensor"
    result = graphql(url, SENSOR % mutation, {"selector": selector})[mutation]
    if result["__typename"] != "Sensor":
        raise BackfillError(f"{mutation} {name}: {result['__typename']}: {result.get('message')}")
    return result["sensorState"]["status"]
