"""The workshop's side of `modelmap zoo`, `modelmap demo` and `modelmap backfill zoo`.

The product's command line loads this module when one of those commands runs
(`modelmap_assets/cli/workshop_entry.py`); the parsing of their options stays there. The zoo is
trained into the first local models folder (`MODELMAP_LOCAL_MODELS`, by default
`<cache>/local`), where the `model_source` resource finds it by its registry, `zoo.json`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from modelmap_assets.cli.main import register
from modelmap_assets.definitions import build_resources
from workshop.demo import SMOLLM_DEFAULT, run_demo
from workshop.smollm import family_keys
from workshop.zoo import ZooSpec, build_zoo, load_registry


def zoo_folder(env: Mapping[str, str] | None = None) -> Path:
    """Where `modelmap zoo` trains the zoo: the first local models folder of the
    `model_source` resource (`MODELMAP_LOCAL_MODELS`, else `<cache>/local`)."""
    folders = build_resources(os.environ if env is None else env)["model_source"].folders
    if not folders:
        raise SystemExit(
            "modelmap zoo: MODELMAP_LOCAL_MODELS is empty (every key a Hub repo): "
            "name a local models folder to train the zoo into"
        )
    return folders[0].resolve()


def zoo(instance: dg.DagsterInstance, small: bool, force: bool) -> list[str]:
    """`modelmap zoo`: train the zoo (`--small`: the tiny one) unless it is cached, and add
    its models to the `models` partitions; returns their keys."""
    folder = zoo_folder()
    spec = ZooSpec.small() if small else ZooSpec.default()
    keys = [m.key for m in build_zoo(folder, spec=spec, force=force)]
    new = register(instance, keys)
    print(f"zoo: {len(keys)} models in {folder}; {len(new)} newly registered")
    return keys


def zoo_keys() -> list[str]:
    """`modelmap backfill zoo`: the keys of the zoo that `modelmap zoo` trained."""
    folder = zoo_folder()
    try:
        return [m.key for m in load_registry(folder)]
    except FileNotFoundError:
        raise SystemExit(f"no zoo in {folder}: run `modelmap zoo` (or `make zoo`) first") from None


def smollm_keys(no_smollm: bool, smollm_family: bool) -> tuple[str, ...]:
    """The SmolLM2 models the demo publishes: none, the real model (the default), or the
    real model and the three derived from it."""
    if no_smollm:
        return ()
    return family_keys() if smollm_family else SMOLLM_DEFAULT


def demo(
    corpus_config: dict, port: int, small_only: bool, no_smollm: bool, smollm_family: bool
) -> dict:
    """`modelmap demo` (workshop/demo.py); returns {'failed': {key: why}, 'storage': data dir}."""
    smollm = smollm_keys(no_smollm, smollm_family)
    return run_demo(corpus_config, smollm, port, small_only=small_only)
