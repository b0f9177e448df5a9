"""The one way from the product to the workshop: `modelmap zoo`, `modelmap demo` and `modelmap
backfill zoo` load `workshop/commands.py` when they run.

The workshop (the zoo trainer, the local Hub, the process starter of the demo) belongs to a source
checkout, not to the installed product, and nothing else in the product imports it.
"""

import importlib
import sys
from pathlib import Path
from types import ModuleType

#: The workshop's module behind `modelmap zoo`, `demo` and `backfill zoo` (workshop/commands.py).
WORKSHOP_COMMANDS = "workshop.commands"
#: The source checkout the product runs from (an editable install); its workshop/ is not installed.
CHECKOUT = Path(__file__).resolve().parents[2]


def workshop_commands(command: str) -> ModuleType:
    """The workshop's commands module, imported when `command` runs: from the import path, else
    from the source checkout beside this package. SystemExit with one line when there is none
    (an installed product has no workshop)."""
    try:
        return importlib.import_module(WORKSHOP_COMMANDS)
    except ModuleNotFoundError as exc:
        if exc.name not in ("workshop", WORKSHOP_COMMANDS):
            raise  # the workshop is there but needs something missing: say what
    if (CHECKOUT / "workshop" / "commands.py").is_file():
        sys.path.append(str(CHECKOUT))
        return importlib.import_module(WORKSHOP_COMMANDS)
    raise SystemExit(
        f"modelmap {command}: needs a source checkout of modelmap (its workshop/ folder holds "
        "the zoo trainer and the local Hub); run it there, e.g. `make demo` or `make zoo`"
    )
