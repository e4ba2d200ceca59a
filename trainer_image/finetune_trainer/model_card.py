"""README.md beside the weights: what was trained, on what, how, and how well."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from finetune_operator import api

from finetune_trainer import retention

if TYPE_CHECKING:
    from finetune_trainer.serving.publish import Serving

MODEL_CARD = "README.md"
# The data report's counts a reader of the card wants, in this order.
DATA_COUNTS = (
    "records_read",
    "train",
    "validation",
    "test",
    "duplicates_removed",
    "leakage_removed",
    "tokens",
    "padding_ratio",
)


def model_card(
    job: api.FineTuneJob,
    metrics: dict[str, Any],
    data_report: dict[str, Any],
    serving: Serving | None = None,
) -> str:
    """The card's sections in the order a reader asks: base, data, training, results, use,
    serving."""
    spec = job.spec
    lines = [
        f"# {job.metadata.name}",
        "",
        f"Fine-tuned from `{spec.model.source}` (revision `{spec.model.revision}`) with "
        f"{spec.method.type} by finetune-operator.",
        *_data(spec.dataset, data_report),
        *_training(spec),
        *_preferences(spec, metrics),
        "",
        "## Results",
        "",
        *_outputs_step(metrics),
        "| metric | value |",
        "|---|---|",
        *(
            f"| {k} | {_plain(v)} |"
            for k, v in sorted(metrics.items())
            if not isinstance(v, dict) and not k.startswith(retention.PREFIX)
        ),
        *_retention(spec, metrics),
        *_use(spec),
        *(_how_to_serve(serving) if serving else []),
    ]
    return "\n".join(lines) + "\n"


def _outputs_step(metrics: dict[str, Any]) -> list[str]:
    """Which weights the outputs hold: the metrics below are theirs."""
    step = metrics.get("outputs_step")
    if step is None:
        return []
    if metrics.get("outputs_chosen_by") == "lowest validation loss":
        why = (
            f"the lowest validation loss (early stopping is on; training ran to step "
            f"{metrics.get('steps')})"
        )
    else:
        why = "the last one (early stopping is off)"
    tested = (
        " The test metrics were measured once, on these weights."
        if any(key.startswith("test_") for key in metrics)
        else ""
    )
    return [f"The outputs hold the weights of step {step}: {why}.{tested}", ""]


def _retention(spec: api.FineTuneJobSpec, metrics: dict[str, Any]) -> list[str]:
    """The loss of each retention set before and after training, or a plain statement
    that none was measured."""
    lines = ["", "## Retention", ""]
    found = retention.results(spec, metrics)
    if not found:
        return [
            *lines,
            "No retention was measured: `evaluation.retention` names no data, so whether "
            "this model forgot what its base model knew is unknown.",
        ]
    limit = spec.evaluation.max_retention_loss_increase
    lines += [
        "Loss (nats per token) on data never trained on, before (base model) and after:",
        "",
        "| set | loss before | loss after | change | verdict |",
        "|---|---|---|---|---|",
    ]
    for result in found:
        verdict = (
            "-"
            if limit is None
            else f"**exceeds {limit}**"
            if result.exceeded
            else f"within {limit}"
        )
        lines.append(
            f"| {result.name} | {result.loss_before:.4f} | {result.loss_after:.4f} | "
            f"{result.loss_increase:+.4f} | {verdict} |"
        )
    if any(result.exceeded for result in found):
        lines += [
            "",
            "Warning: the retention loss rose past `evaluation.maxRetentionLossIncrease`; the "
            "model may have forgotten general knowledge. It was written anyway: check it "
            "before use.",
        ]
    return lines


def _data(dataset: api.DatasetSpec, report: dict[str, Any]) -> list[str]:
    lines = ["", "## Data", "", f"- train: `{dataset.train.source}` ({dataset.train.format})"]
    for name in ("validation", "test"):
        source = getattr(dataset, name)
        lines.append(f"- {name}: " + (f"`{source.source}`" if source else "held out from train"))
    lines += [f"- mix: `{m.source}` (weight {m.weight})" for m in dataset.mix]
    lines += ["", "| records | count |", "|---|---|"]
    lines += [f"| {key} | {_plain(report[key])} |" for key in DATA_COUNTS if key in report]
    return lines + _redactions(dataset, report)


def _redactions(dataset: api.DatasetSpec, report: dict[str, Any]) -> list[str]:
    """How much personal data was removed, by kind and split: counts only, never values."""
    if not dataset.cleaning.redact_pii:
        return ["", "Personal data was not redacted (`cleaning.redactPII: false`)."]
    by_split = report.get("pii_redactions_by_split") or {}
    kinds = sorted({kind for counts in by_split.values() for kind in counts})
    lines = ["", f"Personal data redacted ({dataset.cleaning.pii.mode} mode):"]
    if not kinds:
        return [*lines, "none found."]
    splits = list(by_split)
    lines += ["", f"| kind | {' | '.join(splits)} |", "|---" * (len(splits) + 1) + "|"]
    for kind in kinds:
        lines.append(f"| {kind} | {' | '.join(str(by_split[s].get(kind, 0)) for s in splits)} |")
    return lines


def _training(spec: api.FineTuneJobSpec) -> list[str]:
    hp = spec.hyperparameters
    settings: dict[str, Any] = {
        "method": spec.method.type,
        "epochs": hp.epochs,
        "max steps": hp.max_steps,
        "learning rate": hp.learning_rate,
        "scheduler": f"{hp.lr_scheduler}, warmup {hp.warmup_ratio}",
        "batch size (global)": hp.batch_size,
        "max sequence length": spec.dataset.max_seq_length,
        "packing": spec.dataset.packing,
        "precision": hp.precision,
        "DeepSpeed ZeRO stage": spec.deepspeed.zero_stage,
        "seed": hp.seed,
    }
    if spec.method.objective == "dpo":
        settings["objective"] = _dpo_settings(spec.method.dpo)
    if spec.method.type != "full":
        lora = spec.method.lora
        settings["LoRA"] = (
            f"r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, "
            f"targets={', '.join(lora.target_modules)}"
        )
    lines = ["", "## Training", "", "| setting | value |", "|---|---|"]
    return lines + [f"| {k} | {v} |" for k, v in settings.items() if v is not None]


def _dpo_settings(dpo: api.DpoSpec) -> str:
    smoothing = f", label smoothing {dpo.label_smoothing}" if dpo.loss_type == "robust" else ""
    return f"DPO, {dpo.loss_type} loss, beta {dpo.beta}{smoothing}"


# (metrics.json prefix, the card's column) for the DPO table
PREFERENCE_SPLITS = (("train", "train (last 10 steps)"), ("eval", "validation"), ("test", "test"))
PREFERENCE_STATS = (
    ("reward_accuracy", "reward accuracy (chosen reward > rejected)"),
    ("reward_margin", "reward margin (chosen - rejected)"),
    ("chosen_reward", "chosen reward"),
    ("rejected_reward", "rejected reward"),
    ("chosen_logp", "chosen log-prob"),
    ("rejected_logp", "rejected log-prob"),
)


def _preferences(spec: api.FineTuneJobSpec, metrics: dict[str, Any]) -> list[str]:
    """DPO's own numbers by split: rewards are beta x log(policy / reference) of an answer,
    the reference being the base model."""
    if spec.method.objective != "dpo":
        return []
    splits = [(p, name) for p, name in PREFERENCE_SPLITS if f"{p}_reward_accuracy" in metrics]
    if not splits:
        return []
    lines = [
        "",
        "## Preferences",
        "",
        f"Trained with DPO to prefer each pair's chosen answer over its rejected one. A reward "
        f"is beta ({spec.method.dpo.beta}) times the log-ratio of an answer's probability under "
        "this model and under the base model.",
        "",
        f"| | {' | '.join(name for _, name in splits)} |",
        "|---" * (len(splits) + 1) + "|",
    ]
    for stat, label in PREFERENCE_STATS:
        values = " | ".join(_plain(metrics[f"{p}_{stat}"]) for p, _ in splits)
        lines.append(f"| {label} | {values} |")
    return lines


def _use(spec: api.FineTuneJobSpec) -> list[str]:
    lines = ["", "## Use", ""]
    if spec.method.type == "full" or spec.output.merge_adapter:
        lines.append("`AutoModelForCausalLM.from_pretrained('model')` loads the fine-tuned model.")
    if spec.method.type != "full":
        lines.append(
            "`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), 'adapter')` "
            "loads the adapter on its base model."
        )
    return lines


def _how_to_serve(serving: Serving) -> list[str]:
    served = serving.served
    heading = ["", "## How to serve", ""]
    if serving.manifests_uri is None:
        return [
            *heading,
            f"Not yet from here: {serving.problem}. Then "
            f"`finetune serve-manifest {served.output_uri} --output-uri URI` prints a vLLM "
            "Deployment and Service and a KServe InferenceService for it.",
        ]
    what = (
        f"the LoRA adapter on its base model `{served.base_model}` (the base alone is "
        f"`{served.name}-base`)"
        if served.kind == "lora"
        else f"the {served.kind} model"
    )
    request = {"model": served.name, "messages": [{"role": "user", "content": "Hello"}]}
    return [
        *heading,
        f"`{serving.manifests_uri}` holds manifests that serve {what} as `{served.name}` "
        "through an OpenAI-compatible API:",
        "",
        f"- `vllm.yaml`: a vLLM Deployment and Service `{served.name}-vllm` (port 8000, one "
        "GPU); the files come from the output itself.",
        f"- `kserve.yaml`: a KServe InferenceService `{served.name}` on its Hugging Face runtime.",
        "",
        "```console",
        f"$ finetune serve-manifest {served.output_uri} --only vllm | kubectl apply -f -",
        f"$ kubectl port-forward svc/{served.name}-vllm 8000:8000 &",
        "$ curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\",
        f"    -d '{json.dumps(request)}'",
        "```",
        "",
        "`finetune serve-manifest --help` shows the options (GPUs, namespace, images).",
    ]


def _plain(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
