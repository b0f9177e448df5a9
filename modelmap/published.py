"""The paper's published log-likelihood matrix, read safely and turned into likelihood files.

Oyama et al. publish `raw_log-likelihood_1018.pkl` (github `shimo-lab/modelmap`,
`1000models/`): a pickle of a dict, model name -> a float32 or float64 vector of the text
log-likelihoods (nats) of the N = 10,000 texts of `texts-10k-pile.jsonl`, in the file's order
(the authors' notebook prints a minimum of -20503.7119140625). Such a model is placed on our map
without scoring: its row is written as a likelihood file of origin `imported`
(`modelmap.likelihoods`, n_tokens null) on a corpus built from that same JSONL file.

A downloaded pickle can run code when it is loaded, so it is read with `SafeUnpickler`, which
resolves only the globals that numpy arrays need (under `numpy.core` or `numpy._core`) and
refuses anything else, naming the file and the refused global.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelmap.storage import InvalidModelKey, validate_model_key

PAPER_CORPUS_FILE = "texts-10k-pile.jsonl"
PAPER_N_TEXTS = 10_000

# (module, name) -> where it lives in the installed numpy. Pickles written by numpy 1.x name
# `numpy.core`, by numpy 2.x `numpy._core`; both are accepted and resolved to the same object.
_NUMPY_GLOBALS = {
    ("multiarray", "_reconstruct"),  # ndarray.__reduce__ (protocols 0-4)
    ("multiarray", "scalar"),  # a numpy scalar (np.float32(1.5))
    ("numeric", "_frombuffer"),  # ndarray.__reduce_ex__ with protocol 5
}
_NUMPY_TOP = {"ndarray", "dtype"}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global the published-matrix format never needs."""


class PublishedMatrixError(ValueError):
    """The file is not a published matrix of the expected shape; the message says why."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as protocol-2 pickles of numpy arrays use it: latin-1 text to bytes."""
    if encoding != "latin1":
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r} (only latin1 is used)")
    return codecs.encode(text, "latin1")


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for dicts of numpy vectors: plain dict/list/str/float need no global, and
    the only globals resolved are numpy's array and dtype reconstructors (`numpy.core.*` or
    `numpy._core.*`), `numpy.ndarray`, `numpy.dtype` and latin-1 `_codecs.encode`."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        parts = module.split(".")
        if module == "numpy" and name in _NUMPY_TOP:
            return getattr(np, name)
        if (
            len(parts) == 3
            and parts[:2] in (["numpy", "core"], ["numpy", "_core"])
            and (parts[2], name) in _NUMPY_GLOBALS
        ):
            return getattr(importlib.import_module(f"numpy._core.{parts[2]}"), name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise UnsafePickleError(
            f"{self.source}: refused global {module}.{name}: a published log-likelihood matrix "
            "holds only a dict of numpy arrays (or lists) of floats; this pickle asks for "
            "something else, and loading it could run code"
        )


@dataclass(frozen=True)
class PublishedMatrix:
    """The rows of a published matrix: `loglik_nats` is K x N float64, row i = `names[i]`."""

    path: Path
    sha256: str
    names: list[str]
    loglik_nats: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.loglik_nats.shape


def read_published_matrix(path: str | Path) -> PublishedMatrix:
    """Read a pickled {model name: vector of N log-likelihoods} safely and check its shape.

    Every vector must be 1-D, of the same length, numeric and finite. The file's SHA-256 is of
    the exact bytes that were unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise PublishedMatrixError(f"{path}: no such file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        obj = SafeUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # a truncated or non-pickle file
        raise PublishedMatrixError(f"{path}: not a readable pickle ({exc})") from exc
    if not isinstance(obj, dict) or not obj:
        raise PublishedMatrixError(
            f"{path}: expected a non-empty dict of model name -> vector, got {type(obj).__name__}"
        )
    names, rows, n = [], [], None
    for name, vector in obj.items():
        if not isinstance(name, str):
            raise PublishedMatrixError(f"{path}: a model name is not a string: {name!r}")
        try:
            row = np.asarray(vector, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PublishedMatrixError(f"{path}: model {name}: not a numeric vector") from exc
        if row.ndim != 1:
            raise PublishedMatrixError(f"{path}: model {name}: a {row.ndim}-D array, not 1-D")
        if n is None:
            n = row.size
        elif row.size != n:
            raise PublishedMatrixError(
                f"{path}: model {name} has {row.size} values, the first model {n}"
            )
        bad = int((~np.isfinite(row)).sum())
        if bad:
            raise PublishedMatrixError(f"{path}: model {name}: {bad} values are NaN or inf")
        names.append(name)
        rows.append(row)
    return PublishedMatrix(path=path, sha256=digest, names=names, loglik_nats=np.stack(rows))


def model_key(name: str) -> str:
    """The `models` partition key of a published model name: the name itself when it is a
    valid `org/name` id, else the name with every other character replaced by `-` (parts
    after the second `/` joined by `_`; a name without an org goes under `paper/`)."""
    try:
        return validate_model_key(name)
    except InvalidModelKey:
        pass
    parts = [p for p in name.strip().split("/") if p]
    org, rest = (parts[0], "_".join(parts[1:])) if len(parts) > 1 else ("paper", "_".join(parts))

    def clean(part: str) -> str:
        part = re.sub(r"[^A-Za-z0-9._-]", "-", part)
        part = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", part))
        return part.strip(".-")[:96] or "model"

    return validate_model_key(f"{clean(org)}/{clean(rest)}")


def model_keys(names: list[str]) -> dict[str, str]:
    """{name: key} for every name; two names mapping to one key is an error naming both."""
    keys: dict[str, str] = {}
    taken: dict[str, str] = {}
    for name in names:
        key = model_key(name)
        if key in taken:
            raise PublishedMatrixError(
                f"models {taken[key]!r} and {name!r} would both be partition {key!r}"
            )
        keys[name], taken[key] = key, name
    return keys


def check_corpus(
    matrix: PublishedMatrix,
    n_texts: int,
    corpus_source: str | None,
    corpus_path: str | None,
    paper_file: bool = True,
) -> None:
    """The matrix's N must be the corpus's, and (with `paper_file`) the corpus must be the
    paper's `texts-10k-pile.jsonl`, read in file order (source `jsonl`); else a clear error."""
    k, n = matrix.shape
    if n != n_texts:
        raise PublishedMatrixError(
            f"{matrix.path}: {k} models x {n} texts, but the current corpus has {n_texts} texts: "
            f"the published vectors are the log-likelihoods of the {n} texts of "
            f"{PAPER_CORPUS_FILE} in file order; materialize `corpus` with source jsonl, that "
            f"file and n_texts {n}"
        )
    name = Path(corpus_path).name if corpus_path else None
    if paper_file and (corpus_source != "jsonl" or name != PAPER_CORPUS_FILE):
        raise PublishedMatrixError(
            f"{matrix.path}: the current corpus is not {PAPER_CORPUS_FILE} (source "
            f"{corpus_source!r}, path {corpus_path!r}); the published rows would be attached to "
            f"other texts. Materialize `corpus` with source jsonl and path .../{PAPER_CORPUS_FILE}"
            " (or skip this check for a file of your own with the same shape)"
        )
