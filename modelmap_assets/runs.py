"""What other runs are doing: whether another run of an asset is still in progress."""

import dagster as dg

#: A run that has started and not finished (the same statuses as Dagster's own in-progress set).
IN_PROGRESS_STATUSES = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.SUSPENDED,
]


def in_progress_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """The runs that have started and not finished."""
    return list(instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS_STATUSES)))


def others_in_progress(context: dg.AssetExecutionContext) -> bool:
    """Whether a run other than this one, started and not finished, may write this step's
    assets (a run without an explicit asset selection counts: it may write any)."""
    mine = set(context.selected_asset_keys)
    for run in in_progress_runs(context.instance):
        if run.run_id == context.run_id:
            continue
        if run.asset_selection is None or mine & set(run.asset_selection):
            return True
    return False
