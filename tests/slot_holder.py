"""A process that materializes one `gpu`-pool asset in process (as `modelmap materialize`
does), for the stuck-slot tests: `python slot_holder.py SECONDS MARKER`."""

import sys
import time
from pathlib import Path

import dagster as dg

from modelmap_assets.instance.inprocess import materialize_here


@dg.asset(pool="gpu")
def scoring_step(context: dg.AssetExecutionContext) -> None:
    Path(sys.argv[2]).write_text("started")
    time.sleep(float(sys.argv[1]))


if __name__ == "__main__":
    with dg.DagsterInstance.get() as instance:
        result = materialize_here([scoring_step], instance=instance, raise_on_error=False)
    print("success" if result.success else "failure", flush=True)
