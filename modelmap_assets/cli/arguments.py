"""The `modelmap` command's argument checks: a mistake is one line on stderr that names the
argument and the reason, and exit status 2 (argparse's), never a traceback."""

import argparse
import os
from pathlib import Path

from modelmap.storage import InvalidModelKey, validate_model_key
from resources.settings import build_resources

FORCE_HELP = "score models already scored at the same sha, corpus and settings again"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (`prog: error: argument X: reason`),
    without the usage block; its subcommands' parsers are of the same class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """An integer >= 1 (`-k`, `--n-texts`)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def model_key(text: str) -> str:
    """A valid model key (`org/name`, `modelmap.storage.validate_model_key`)."""
    try:
        return validate_model_key(text)
    except InvalidModelKey as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def check_corpus_source(parser: argparse.ArgumentParser, source: str, path: str | None) -> None:
    """Exit with one line unless `path` is what corpus `source` reads: a JSONL file for
    `jsonl`, a folder for `folder`, nothing needed for `embedded`."""
    if source == "embedded":
        return
    if path is None:
        parser.error(f"argument --path: --source {source} needs a path")
    if source == "jsonl" and not Path(path).is_file():
        parser.error(f"argument --path: no such file: {path}")
    if source == "folder" and not Path(path).is_dir():
        parser.error(f"argument --path: no such folder: {path}")


def check_scored(parser: argparse.ArgumentParser, key: str) -> None:
    """Exit with one line unless model `key` has a likelihood file (in `MODELMAP_DATA`)."""
    path = build_resources(os.environ)["storage"].likelihood_path(key)
    if not path.exists():
        parser.error(
            f"argument key: model {key} is not scored (no likelihood file at {path}); "
            "score it first"
        )
