"""The environment that keeps every process we start from phoning home.

Our users train on data that may not leave the building, so nothing we run reports usage
anywhere: `finetune run`, `prepare` and `pii-report` put these variables into their own
environment (which the local Ray instance and its workers inherit), and the operator
writes them into every container of every pod of a RayJob. Libraries read them at import
or at start, which is why they travel as environment variables and not as calls.

What phones home without them (looked up in each library's source):
- Ray: usage statistics to usage-stats.ray.io from the head's dashboard process (on by
  default; Ray Data adds its own). Switched off, a cluster started by `ray start` (every
  KubeRay cluster) still posts a "usage stats disabled" report there, so the report URL
  points nowhere too. The same process asks the cloud metadata address once at start
  whatever the settings (no switch in Ray): see the README's privacy section.
- huggingface_hub (and transformers, datasets, peft through it): usage pings and a
  telemetry user agent on every Hub request; with no hf:// source, any Hub lookup at all.
- tldextract: the Public Suffix List from publicsuffix.org at first use.

Checked and silent: DeepSpeed, peft, accelerate, Presidio, spaCy (downloads only from its
CLI), matplotlib, torch. The training loop is ours, so transformers' Trainer callbacks
(W&B, MLflow, Comet) never run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping

from finetune_operator import api

# Always off: reports about how we use a library, sent to its maker.
TELEMETRY_OFF: Mapping[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Not a URL that any HTTP client can open: the "disabled" report fails before a socket.
    "RAY_USAGE_STATS_REPORT_URL": "off://no-usage-reports",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # The cross-tool convention (donottrack.sh): huggingface_hub honours it, and so may
    # whatever else an admin adds to the trainer image.
    "DO_NOT_TRACK": "1",
}
# Always: downloads that nobody asked for, whatever the opt-in. An empty list of URLs:
# tldextract uses the suffix list bundled with it (our URL recognizer asks for that too).
UNASKED_FETCHES_OFF: Mapping[str, str] = {"TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""}
# Off unless the job names an hf:// source: then fetching from the Hub is what the user
# asked for, and offline mode would refuse the download (telemetry stays off even then).
HUB_OFFLINE: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}
HUB_SCHEME = "hf://"
# The explicit opt-in of one process tree: `FINETUNE_TELEMETRY=1 finetune run job.yaml`
# leaves usage statistics to each library's default. The operator sets it in every pod
# when the admin opts in (FINETUNE_TRAINER_TELEMETRY), so the driver agrees with the pod.
OPT_IN_ENV = "FINETUNE_TELEMETRY"


def job_sources(spec: api.FineTuneJobSpec) -> Iterator[str]:
    """Every place the job reads from: the model and each dataset source."""
    yield spec.model.source
    dataset = spec.dataset
    for split in (dataset.train, dataset.validation, dataset.test):
        if split is not None:
            yield split.source
    for extra in dataset.mix:
        yield extra.source


def uses_hub(spec: api.FineTuneJobSpec) -> bool:
    return any(source.startswith(HUB_SCHEME) for source in job_sources(spec))


def quiet_environment(
    spec: api.FineTuneJobSpec | None, *, telemetry: bool = False
) -> dict[str, str]:
    """The variables for a job's processes (spec None: a command that reads no hf:// source).

    telemetry=True is an explicit opt-in (the operator's FINETUNE_TRAINER_TELEMETRY, a
    process's FINETUNE_TELEMETRY): usage statistics are then left to each library's
    default; unasked fetches stay off, and the Hub offline unless a source uses it.
    """
    environment = dict(UNASKED_FETCHES_OFF)
    if not telemetry:
        environment.update(TELEMETRY_OFF)
    if spec is None or not uses_hub(spec):
        environment.update(HUB_OFFLINE)
    return environment


def apply_to_process(
    spec: api.FineTuneJobSpec | None, environ: MutableMapping[str, str]
) -> dict[str, str]:
    """Sets the quiet environment where the user has not set a variable; what it set.

    A variable already set wins (`RAY_USAGE_STATS_ENABLED=1` opts in to Ray's statistics
    alone), and in a pod the values came from the RayJob already.
    """
    telemetry = environ.get(OPT_IN_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    quiet = quiet_environment(spec, telemetry=telemetry)
    added = {name: value for name, value in quiet.items() if name not in environ}
    environ.update(added)
    return added
