"""MLflow tracking and model registry, called through `mlflow.MlflowClient` (no global state).

Several Dagster runs (separate processes) may log to one SQLite store at once: writes that hit
"database is locked" are retried with a short backoff, and the first creation of the store's
tables is serialised with a file lock next to the database. A SQLite store is created with the
artifact root, so MLflow's `Default` experiment keeps its artifacts under it; an empty `Default`
pointing elsewhere (a store a plain client created) is hidden.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cloudpickle
import dagster as dg
import numpy as np
from pydantic import Field

from modelmap.reports.predictor import ScorePredictor

if TYPE_CHECKING:
    import mlflow

_ATTEMPTS = 6
_INITIALISED: set[str] = set()  # store URIs whose tables this process has checked
_GLOBAL_URI_LOCK = threading.Lock()  # log_model needs mlflow's process-global URIs
_DEFAULT_EXPERIMENT_ID = "0"  # the `Default` experiment MLflow creates with a store


class _NoCloudpickleWarning(logging.Filter):
    """Drop log_model's advice against pickled models: ours pickles only a class reference
    (the weights travel in the .npz, read with allow_pickle=False)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "serialized using CloudPickle" not in record.getMessage()


_QUIET_FILTER = _NoCloudpickleWarning()


def _quiet_mlflow() -> None:
    """Before the first client: no telemetry, no progress bars in run logs, no pickle advice.

    Called where MLflow is used, not at import (importing this module changes nothing)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logger = logging.getLogger("mlflow.pyfunc")
    if _QUIET_FILTER not in logger.filters:
        logger.addFilter(_QUIET_FILTER)


Artifacts = dict[str, str | Path | list[str | Path]]


def _retry(fn, *args, **kwargs):
    """Call fn, retrying on SQLite lock errors with exponential backoff (0.1 s, 0.2 s, ...)."""
    for attempt in range(_ATTEMPTS):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # MlflowException or sqlalchemy OperationalError
            if attempt == _ATTEMPTS - 1 or "locked" not in str(e).lower():
                raise
            time.sleep(0.1 * 2**attempt * (1 + random.random()))


_SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "token", "secret", "key", "sig", "signature")
_DOWN: dict[str, float] = {}  # store URI -> when this process found it unreachable
_DOWN_FOR_S = 300.0  # then one new short attempt
_CONNECT_TIMEOUT_S = 3.0
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433, "http": 80, "https": 443}


def mask_uri(uri: str) -> str:
    """`uri` with its password and secret query values replaced by `***` (for messages)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [
                (k, "***" if any(w in k.lower() for w in _SECRET_QUERY_KEYS) else v)
                for k, v in pairs
            ],
            safe="*",
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # nothing secret (and no normalising of the URI's spelling)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_secrets(text: str, uri: str) -> str:
    """`text` with the URI and each secret in it (password, secret query values) masked."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    text = text.replace(uri, mask_uri(uri))
    try:
        parts = urlsplit(uri)
    except ValueError:
        return text
    secrets = [parts.password] if parts.password else []
    secrets += [
        v
        for k, v in parse_qsl(parts.query)
        if v and any(w in k.lower() for w in _SECRET_QUERY_KEYS)
    ]
    for secret in secrets:
        for form in {secret, unquote(secret)}:
            if len(form) >= 3:
                text = text.replace(form, "***")
    return text


def unreachable(uri: str, timeout_s: float = _CONNECT_TIMEOUT_S) -> str | None:
    """Why the store at `uri` cannot be reached in one short attempt, or None if it answers.

    MLflow retries a store that is down for minutes (about 100 s per call for a database):
    one TCP connection with a timeout tells first. Local stores (SQLite, files) always pass.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except (OSError, ValueError) as exc:
        return f"cannot connect to {parts.hostname}:{parts.port or _DEFAULT_PORTS[scheme]} ({exc})"


class TrackingStoreDown(RuntimeError):
    """The tracking store did not answer one short attempt."""


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def __getattr__(name: str):
    # Predictor versions registered before the pyfunc class moved to resources.mlflow_pyfunc
    # were pickled as resources.mlflow.ScorePredictorModel: resolve that name for them.
    if name == "ScorePredictorModel":
        from resources.mlflow_pyfunc import ScorePredictorModel

        return ScorePredictorModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MODES = ("on", "off", "required")


class MlflowResource(dg.ConfigurableResource):
    """Where runs and registered models go; `mode="off"` turns every method into a no-op."""

    tracking_uri: str | None = Field(
        default=None,
        description="where runs and the registry go (may hold a password); none: "
        "`sqlite:///<dagster_home>/mlflow/mlflow.db`",
    )
    dagster_home: str = Field(
        default="dagster_home", description="the Dagster instance folder (holds the default store)"
    )
    artifact_root: str | None = None  # None: "artifacts" next to a SQLite database
    experiment: str = "modelmap"
    mode: str = Field(
        default="on",
        description="`on` (a tracking-store error is a warning: the files are the record of "
        "truth), `off`, `required` (an error fails the step)",
    )

    @property
    def enabled(self) -> bool:
        return self._mode() != "off"

    @property
    def required(self) -> bool:
        return self._mode() == "required"

    def _mode(self) -> str:
        if self.mode not in MODES:
            raise ValueError(
                f"mlflow.mode (MODELMAP_MLFLOW) is {self.mode!r}; "
                f"expected one of {', '.join(MODES)}"
            )
        return self.mode

    def uri(self) -> str:
        uri = self.tracking_uri
        if not uri:
            home = Path(self.dagster_home).resolve()
            uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
        if (db := _sqlite_path(uri)) is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        return uri

    def _artifact_location(self, uri: str) -> str | None:
        if self.artifact_root:  # a URI, or a local path (made absolute)
            root = self.artifact_root
            return root if "://" in root else Path(root).resolve().as_uri()
        db = _sqlite_path(uri)
        return (db.resolve().parent / "artifacts").as_uri() if db is not None else None

    def _client(self) -> tuple[mlflow.MlflowClient, str]:
        """A client on this store and the id of `experiment` (created if need be)."""
        _quiet_mlflow()
        uri = self.uri()
        down_since = _DOWN.get(uri)
        if down_since is not None and time.monotonic() - down_since < _DOWN_FOR_S:
            raise TrackingStoreDown("unreachable (found so earlier in this process)")
        reason = unreachable(uri)
        if reason is not None:
            _DOWN[uri] = time.monotonic()
            raise TrackingStoreDown(reason)
        _DOWN.pop(uri, None)
        import mlflow
        from mlflow.exceptions import MlflowException

        db = _sqlite_path(uri)
        if db is not None and uri not in _INITIALISED:
            # The first client on a new database creates its tables (tracking store eagerly,
            # registry store on first use): two processes doing it at once would collide.
            with open(db.with_name(db.name + ".lock"), "a") as lock:
                with contextlib.suppress(ImportError):
                    import fcntl

                    fcntl.flock(lock, fcntl.LOCK_EX)
                root = self._artifact_location(uri)
                _retry(_create_tracking_store, uri, root)
                client = _retry(mlflow.MlflowClient, tracking_uri=uri, registry_uri=uri)
                _retry(client.search_registered_models, max_results=1)
                _retry(_hide_stray_default_experiment, client, root)
            _INITIALISED.add(uri)
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        exp = _retry(client.get_experiment_by_name, self.experiment)
        if exp is None:
            try:
                return client, _retry(
                    client.create_experiment, self.experiment, self._artifact_location(uri)
                )
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = _retry(client.get_experiment_by_name, self.experiment)
        if exp.lifecycle_stage == "deleted":
            _retry(client.restore_experiment, exp.experiment_id)
        return client, exp.experiment_id

    def runs_url(self, base: str = "http://127.0.0.1:5000") -> str:
        """The page of this experiment's runs in an MLflow UI served at `base` (`make mlflow`
        prints it), in the UI's model-training view (its default view is GenAI's, which opens
        an experiment on its traces); creates the store and the experiment if need be."""
        _, experiment_id = self._client()
        return (
            f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        )

    def _start(
        self, client, experiment_id, run_name, params, metrics, tags, context, started_at=None
    ) -> str:
        """Create a run and log its params, finite metrics and tags; return its id."""
        from mlflow.entities import Metric, Param

        tags = {k: str(v) for k, v in (tags or {}).items()}
        if context is not None:
            tags["dagster.run_id"] = context.run.run_id
            tags["dagster.asset_key"] = ",".join(
                k.to_user_string() for k in context.selected_asset_keys
            )
            if context.has_partition_key:
                tags["dagster.partition_key"] = context.partition_key
            elif "modelmap.model" in tags:  # one model of a batch run (a partition range)
                tags["dagster.partition_key"] = tags["modelmap.model"]
        finite = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(float(v))}
        skipped = {k: str(float(v)) for k, v in (metrics or {}).items() if k not in finite}
        if skipped:
            tags["modelmap.skipped_metrics"] = ",".join(f"{k}={v}" for k, v in skipped.items())
        start_ms = int(started_at * 1000) if started_at is not None else None
        run = _retry(
            client.create_run, experiment_id, start_time=start_ms, run_name=run_name, tags=tags
        )
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        try:
            _retry(
                client.log_batch,
                run_id,
                metrics=[Metric(k, v, now, 0) for k, v in finite.items()],
                params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()],
            )
        except BaseException:
            _retry(client.set_terminated, run_id, "FAILED")
            raise
        return run_id

    def _soft(self, what: str, log_to, fn, /, *args, **kwargs):
        """Call fn; a store error fails the step only when `required`. Every message masks the
        store's credentials; a store found down is said once per process, then skipped."""
        uri = self.uri() if self.enabled else ""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            message = mask_secrets(
                f"MLflow ({uri}): {what} not recorded: {type(exc).__name__}: {exc}", uri
            )[:2000]
            if self.required:
                if mask_secrets(str(exc), uri) == str(exc) and not isinstance(
                    exc, TrackingStoreDown
                ):
                    raise
                raise RuntimeError(message) from None  # the original names a secret
            if isinstance(exc, TrackingStoreDown) and "earlier in this process" in str(exc):
                return None  # said once already
            if isinstance(exc, TrackingStoreDown):
                message += "; going on without MLflow in this run (the files are the record)"
            (log_to.log.warning if log_to is not None else logging.getLogger(__name__).warning)(
                message
            )
            return None

    def log_run(self, run_name: str, **kwargs) -> str | None:
        """Log one finished run (see `_log_run`); never fails the caller unless `required`."""
        return self._soft(
            f"run {run_name!r}", kwargs.get("context"), self._log_run, run_name, **kwargs
        )

    def register_predictor(self, predictor: ScorePredictor, **kwargs) -> tuple[str, str] | None:
        """Log and register `predictor` (see `_register_predictor`); soft unless `required`."""
        return self._soft(
            "predictor", kwargs.get("context"), self._register_predictor, predictor, **kwargs
        )

    def _log_run(
        self,
        run_name: str,
        *,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        artifacts: Artifacts | None = None,
        context: dg.AssetExecutionContext | None = None,
        started_at: float | None = None,
    ) -> str | None:
        """Log one finished run; `artifacts` maps a sub-folder ("" for the root) to a path or
        a list of paths (files, or folders logged whole); `started_at` (Unix seconds) is when
        the work began, so the run's duration in the UI is the work's."""
        if not self.enabled:
            return None
        client, experiment_id = self._client()
        run_id = self._start(
            client, experiment_id, run_name, params, metrics, tags, context, started_at
        )
        try:
            _log_artifacts(client, run_id, artifacts)
        except BaseException:
            _retry(client.set_terminated, run_id, "FAILED")
            raise
        _retry(client.set_terminated, run_id, "FINISHED")
        return run_id

    def _register_predictor(
        self,
        predictor: ScorePredictor,
        *,
        name: str = "modelmap-benchmark-predictor",
        run_name: str,
        params: dict[str, Any] | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        context: dg.AssetExecutionContext | None = None,
        artifacts: Artifacts | None = None,
        example_n_rows: int = 1,
    ) -> tuple[str, str] | None:
        """Log `predictor` as a pyfunc model in a new run (with `artifacts`, as in `log_run`)
        and register it; returns (run id, version)."""
        if not self.enabled:
            return None
        _quiet_mlflow()
        import mlflow
        import pandas as pd

        from resources.mlflow_pyfunc import ScorePredictorModel

        client, experiment_id = self._client()
        run_id = self._start(client, experiment_id, run_name, params, metrics, tags, context)
        uri = self.uri()
        # The example input is the mean training model (its row-centred column means).
        rows = np.tile(predictor.col_means, (example_n_rows, 1))
        example = pd.DataFrame(rows, columns=predictor.text_ids)
        output = pd.DataFrame(predictor.predict(rows), columns=predictor.targets)
        signature = mlflow.models.infer_signature(example, output)
        # Explicit pins: no requirement inference (slow, and it may try the network).
        pins = [f"{m.__name__}=={m.__version__}" for m in (mlflow, cloudpickle, np, pd)]
        try:
            _log_artifacts(client, run_id, artifacts)
            with tempfile.TemporaryDirectory() as tmp, _global_uris(uri):
                npz = predictor.save(Path(tmp) / "predictor.npz")
                # start_run(run_id) resumes our run and ends it FINISHED (FAILED on error).
                with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", ".*input example was not provided")
                    info = mlflow.pyfunc.log_model(
                        name="predictor",
                        python_model=ScorePredictorModel(),
                        artifacts={"predictor": str(npz)},
                        registered_model_name=name,
                        signature=signature,
                        # No input_example: MLflow then loads the model back and pushes
                        # the example through its JSON serving path to validate it, which
                        # took 22 of the report's 46 s at N = 10,000 columns. The signature
                        # still names every input column.
                        pip_requirements=pins,
                    )
        except BaseException:
            _retry(client.set_terminated, run_id, "FAILED")
            raise
        return run_id, str(info.registered_model_version)


def _create_tracking_store(uri: str, artifact_root: str | None) -> None:
    """Create the store's tables, if none, with `artifact_root` as the default artifact root:
    MLflow's `Default` experiment (id 0) then keeps its artifacts under that root, not in a
    `mlruns/` folder of whichever working directory the first client had."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if artifact_root is not None:
        SqlAlchemyStore(uri, artifact_root)  # its engine is MLflow's, shared by every client


def _hide_stray_default_experiment(client: mlflow.MlflowClient, artifact_root: str | None) -> None:
    """Delete (hide in the UI) MLflow's `Default` experiment when it is empty and its artifact
    location is outside `artifact_root`: a store created by a plain client points it at a
    `mlruns/` folder that does not exist. A `Default` holding runs is left as it is."""
    from mlflow.entities import ViewType

    if artifact_root is None:
        return
    default = client.get_experiment(_DEFAULT_EXPERIMENT_ID)
    inside = default.artifact_location.startswith(artifact_root.rstrip("/") + "/")
    if default.lifecycle_stage != "active" or inside:
        return
    if not client.search_runs([_DEFAULT_EXPERIMENT_ID], max_results=1, run_view_type=ViewType.ALL):
        client.delete_experiment(_DEFAULT_EXPERIMENT_ID)


def _log_artifacts(client: mlflow.MlflowClient, run_id: str, artifacts: Artifacts | None) -> None:
    for folder, paths in (artifacts or {}).items():
        for path in paths if isinstance(paths, list | tuple) else [paths]:
            log = client.log_artifacts if Path(path).is_dir() else client.log_artifact
            _retry(log, run_id, str(path), folder or None)


@contextlib.contextmanager
def _global_uris(uri: str):
    """Point mlflow's fluent API (global URIs, also exported as env vars) at `uri`, then restore."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    with _GLOBAL_URI_LOCK:
        saved_env = {k: os.environ.get(k) for k in names}
        saved = tracking_utils._tracking_uri, registry_utils._registry_uri
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved[0])
            registry_utils._registry_uri = saved[1]
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
