"""MLflow runs: one parent run per pipeline execution, one nested run per stage.

Stages are separate processes (DVC runs them), so the parent is found by a pipeline id that
`make repro` exports (DIFFAUDIT_PIPELINE_ID); `dvc exp run` supplies DVC_EXP_NAME; a bare
`dvc repro` groups stages by git commit and config hash. Only global rank 0 ever writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from diffaudit.config.schema import Config
from diffaudit.errors import TrackingError
from diffaudit.tracking.orphans import close_orphaned_runs, process_tags
from diffaudit.utils.lineage import git_commit, path_md5
from diffaudit.utils.process import stage_startup_seconds

PIPELINE_TAG = "diffaudit.pipeline_id"
STAGE_TAG = "diffaudit.stage"
# Every stage run logs both (benchmarks/end_to_end.py reads them): seconds from process start to the
# stage's first line of work, and the process's peak resident set.
STARTUP_METRIC = "startup_seconds"
PEAK_RSS_METRIC = "peak_rss_mib"
# MLflow 3's UI opens an experiment on its GenAI traces page unless the experiment says what kind it is:
# the `mlflow.experimentKind` tag its JS reads ("custom_model_development": the training runs table).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# MLflow 3.17 ignores that tag: its "GenAI | Model training" switch (top left; a click is remembered by
# the browser, `?workflowType=machine_learning` in a link opens that link so) decides. The description
# says so.
EXPERIMENT_NOTE = (
    "Choose Model training (top left) to see the runs, not the GenAI overview. diffaudit model training: "
    "one run per pipeline execution, its name and description the release verdict (tag "
    "`release.decision`), one nested run per stage."
)


def is_global_zero() -> bool:
    """True on the process that may write (rank 0 of a distributed job, or a single process)."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var]) == 0
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def tracking_uri(cfg: Config) -> str:
    """MLFLOW_TRACKING_URI wins over the config, so a shared server needs no config change."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri


def redact_uri(uri: str) -> str:
    """Drop credentials (user:password@) from a URI before it is printed or logged."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


def health_request(uri: str) -> urllib.request.Request:
    """The GET of `uri`'s /health. urllib reads `user:password@` as part of the host name (and fails to
    resolve it), so credentials in the URI move into a basic-auth header and out of the URL."""
    parts = urllib.parse.urlsplit(uri)
    hostport = parts.netloc.rpartition("@")[2]
    url = urllib.parse.urlunsplit((parts.scheme, hostport, parts.path.rstrip("/") + "/health", "", ""))
    req = urllib.request.Request(url)
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        pw = urllib.parse.unquote(parts.password or "")
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
    return req


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds, with the URI in the message, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    # Keep MLflow's own client from retrying for minutes if the server goes away later.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if "@" in urllib.parse.urlsplit(uri).netloc:
        # MLflow prints "View run ... at: <tracking URI>/#/..." when a run ends: not with a password in it.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        with urllib.request.urlopen(health_request(uri), timeout=timeout) as resp:
            if resp.status != 200:
                raise TrackingError(f"MLflow server {redact_uri(uri)} answered /health with {resp.status}")
    except urllib.error.HTTPError as err:
        raise TrackingError(f"MLflow server {redact_uri(uri)} answered /health with {err.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
        raise TrackingError(
            f"MLflow tracking server {redact_uri(uri)} is unreachable ({err}); start it (`make ui`, or "
            "`make server` for the team's) or unset MLFLOW_TRACKING_URI to use the local sqlite store"
        ) from None


def setup(cfg: Config) -> str:
    """Point MLflow at the configured store and experiment; return the experiment id."""
    uri = tracking_uri(cfg)
    check_reachable(uri)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # MLflow also exports the URI to the environment; undo that, so the user's variable (or its
    # absence) still decides for the next config in this process.
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before
    try:
        name = cfg.tracking.experiment_name
        if uri.startswith("sqlite:///") and mlflow.get_experiment_by_name(name) is None:
            # Artifacts beside the database, not in whatever directory the process started in.
            root = Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns"
            mlflow.create_experiment(name, artifact_location=root.as_uri())
        experiment = mlflow.set_experiment(name)
        _describe_experiment(experiment)
        return experiment.experiment_id
    except Exception as err:  # MLflow raises many types for a bad store
        raise TrackingError(f"cannot use MLflow store {redact_uri(uri)}: {err}") from None


def _describe_experiment(experiment: Any) -> None:
    """The experiment says it is model training, and (its description, shown in the experiment list) where
    the verdict is; a description someone wrote is kept."""
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        _set_experiment_tag_once(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    if not experiment.tags.get("mlflow.note.content"):
        _set_experiment_tag_once(experiment.experiment_id, "mlflow.note.content", EXPERIMENT_NOTE)


def _set_experiment_tag_once(experiment_id: str, key: str, value: str) -> None:
    """Set an experiment tag; a pipeline that set it at the same moment (a unique-key clash in a shared
    server's database) is as good as setting it here."""
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.set_experiment_tag(experiment_id, key, value)
    except MlflowException:
        if key not in client.get_experiment(experiment_id).tags:
            raise


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"}, as MLflow params."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out |= flatten(v, f"{prefix}{k}.")
    else:
        out[prefix.rstrip(".")] = json.dumps(data) if isinstance(data, list) else str(data)
    return out


def config_params(cfg: Config) -> dict[str, str]:
    params = flatten(cfg.model_dump(mode="json"))
    params["tracking.uri"] = redact_uri(params["tracking.uri"])
    return params


def pipeline_id(cfg: Config) -> str:
    explicit = os.environ.get("DIFFAUDIT_PIPELINE_ID") or os.environ.get("DVC_EXP_NAME")
    if explicit:
        return explicit
    digest = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]
    return f"{git_commit()[:12]}-{digest}"


def parent_name(pid: str) -> str:
    """The parent run's name (pipelines/pipeline_run.py puts the verdict before it when the pipeline ends)."""
    return f"pipeline-{pid[:24]}"


def find_or_create_parent(experiment_id: str, pid: str, cfg: Config | None = None) -> str:
    """The parent run of pipeline execution `pid`, created (and left FINISHED) on first use."""
    client = MlflowClient()
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{pid}' and tags.`{STAGE_TAG}` = 'pipeline'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=parent_name(pid),
        tags={PIPELINE_TAG: pid, STAGE_TAG: "pipeline", "git_commit": git_commit()},
    )
    if cfg is not None:
        _log_params(client, run.info.run_id, config_params(cfg))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


@contextmanager
def stage_run(cfg: Config, stage: str, inputs: dict[str, str | Path] | None = None) -> Iterator[Run | None]:
    """A nested MLflow run for one stage: config params, lineage tags, the config as an artifact.

    Yields None on ranks other than 0. The run ends FAILED if the stage raises. When the store fails
    mid-stage (a tracking server restarted or gone), the stage fails with a one-line TrackingError that
    names the run left unfinished; the next stage run marks that one FAILED (`orphans.close_orphaned_runs`).
    """
    if not is_global_zero():
        yield None
        return
    experiment_id = setup(cfg)
    pid = pipeline_id(cfg)
    parent = find_or_create_parent(experiment_id, pid, cfg)
    tags = {
        STAGE_TAG: stage,
        PIPELINE_TAG: pid,
        "git_commit": git_commit(),
        "mlflow.parentRunId": parent,  # nests the run under the pipeline in the UI
    } | process_tags()
    for name, path in (inputs or {}).items():
        if Path(path).exists():
            tags[f"input_md5.{name}"] = path_md5(path)
    run_id = ""
    try:
        with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags) as run:
            run_id = run.info.run_id
            for closed in close_orphaned_runs(MlflowClient(), experiment_id, pid, stage, run_id):
                print(f"[{stage}] MLflow run {closed} was never closed (killed, or the store failed): FAILED")
            _log_params(MlflowClient(), run_id, config_params(cfg))
            mlflow.log_text(
                yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config/params.yaml"
            )
            startup = stage_startup_seconds(
                stage
            )  # work starts here: after interpreter, imports, params, run
            if startup is not None:
                mlflow.log_metric(STARTUP_METRIC, startup)
            yield run
            mlflow.log_metric(PEAK_RSS_METRIC, peak_rss_mib())
    except Exception as err:
        if not is_store_failure(err):
            raise
        left = (
            f"its run {run_id} may be left RUNNING (the stage's next run marks it FAILED)" if run_id else ""
        )
        raise TrackingError(
            f"MLflow store {redact_uri(tracking_uri(cfg))} failed during stage {stage}: "
            f"{store_failure_line(err)}; {left or 'no run was started'}"
        ) from None


def is_store_failure(err: BaseException) -> bool:
    """Whether an exception came from the MLflow store (a refused or failed request), not the stage."""
    import requests
    from mlflow.exceptions import MlflowException

    return isinstance(err, (MlflowException, requests.exceptions.RequestException))


def store_failure_line(err: BaseException) -> str:
    """The store's error on one short line, without credentials."""
    text = " ".join(str(getattr(err, "message", err)).split())
    return redact_uri(text)[:300]


def peak_rss_mib() -> float:
    """The largest resident set this process (or any child it waited for) reached, in MiB."""
    import resource

    kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    )
    return kib / 1024


# Leaves of a result dump that are settings or sample sizes, not measurements: config belongs in params
# (every stage logs the flattened config there), and a metric chart of a constant buries the headline.
SETTING_KEYS = frozenset(
    {
        "bootstrap",
        "reps",
        "level",
        "ci_level",
        "pr_k",
        "subset_size",
        "n",
        "n_images",
        "n_generated",
        "n_train",
        "n_test",
        "n_members",
        "num_images",
        "num_per_class",
    }
)
SETTING_SUFFIXES = ("_n", "_n_train", "_n_test")


def is_setting(path: str) -> bool:
    """Whether a dotted metric path names a setting or a sample size (any part of it: `bootstrap.reps`,
    `cas_n_train`, `conditional_accuracy_per_class_n.3`)."""
    return any(part in SETTING_KEYS or part.endswith(SETTING_SUFFIXES) for part in path.split("."))


def mlflow_key(name: str) -> str:
    """A metric, param or tag key MLflow accepts (alphanumerics, `_ - . /` and spaces): every other
    character becomes `_`. Attribute and class names reach keys as data says (`skin tone (1-6)` ->
    `skin tone _1-6_`); result files and reports keep them as they are."""
    return re.sub(r"[^\w./ -]", "_", name)


def log_metrics_flat(metrics: dict[str, Any], prefix: str = "") -> None:
    """Log every numeric leaf of a nested dict as an MLflow metric named by its dotted path, except the
    settings and sample sizes (`is_setting`)."""
    flat: dict[str, float] = {}

    def walk(d: Any, p: str) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, f"{p}{k}.")
        elif isinstance(d, (int, float)) and not isinstance(d, bool):
            name = p.rstrip(".")
            if not is_setting(name.removeprefix(prefix)):
                flat[mlflow_key(name)] = float(d)

    walk(metrics, prefix)
    if flat:
        mlflow.log_metrics(flat)


def log_outputs(
    *,
    metrics: Mapping[str, Any] | None = None,
    prefix: str = "",
    files: Iterable[str | Path] = (),
    folders: Mapping[str, str | Path] | None = None,
    artifact_path: str | None = None,
    tags: Mapping[str, str] | None = None,
    curves: Mapping[str, Mapping[int, float]] | None = None,
    params: Mapping[str, Any] | None = None,
) -> None:
    """What a stage leaves in its MLflow run, in one call: every numeric leaf of `metrics` (dotted names
    after `prefix`; settings and sample sizes left out: `is_setting`), `curves` as metric histories
    (name -> {step: value}, the dashboard's line charts), `files` as artifacts (under `artifact_path`),
    each folder under its artifact name, tags, and `params` (facts that are settings rather than
    measurements, e.g. split sizes). Does nothing outside a run (ranks other than 0), so stages call it
    unconditionally."""
    if not mlflow.active_run():
        return
    if metrics:
        log_metrics_flat(dict(metrics), prefix=prefix)
    if curves:
        _log_curves(curves)
    for f in files:
        mlflow.log_artifact(str(f), artifact_path)
    for name, folder in (folders or {}).items():
        mlflow.log_artifacts(str(folder), name)
    if tags:
        mlflow.set_tags({mlflow_key(k): v for k, v in tags.items()})
    if params:
        mlflow.log_params({mlflow_key(k): str(v) for k, v in params.items()})


def _log_curves(curves: Mapping[str, Mapping[int, float]]) -> None:
    """Metric histories in batched calls (MLflow takes at most 1000 metrics per batch)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(mlflow_key(name), float(v), now, int(step))
        for name, pts in curves.items()
        for step, v in pts.items()
    ]
    client, run_id = MlflowClient(), mlflow.active_run().info.run_id
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
