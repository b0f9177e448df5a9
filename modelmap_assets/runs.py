"""What other runs are doing: whether another run of an asset is still in progress."""

import dagster as dg
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES


def others_in_progress(context: dg.AssetExecutionContext) -> bool:
    """Whether a run other than this one, still queued or running, may write this step's
    assets (a run without an explicit asset selection counts: it may write any)."""
    mine = set(context.selected_asset_keys)
    records = context.instance.get_run_records(
        dg.RunsFilter(statuses=list(IN_PROGRESS_RUN_STATUSES))
    )
    for record in records:
        run = record.dagster_run
        if run.run_id == context.run_id:
            continue
        if run.asset_selection is None or mine & set(run.asset_selection):
            return True
    return False
