"""The FineTuneJob API (finetune.io/v1alpha1): the single source of truth.

The CRD in crds/ is generated from these models (see crd.py), `finetune validate`
and the operator validate against them, and the trainer reads its spec through
them. Keep this module free of torch, ray and Kubernetes clients.

Cross-field rules are written once, in CEL, on the model they belong to
(`x-kubernetes-validations`): the API server enforces them at admission and
`finetune validate` / the operator evaluate the same expressions with cel-python.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from finetune_operator import kube_values

GROUP = "finetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"

# A RayJob's name must be a DNS-1035 label of at most 47 characters (KubeRay appends
# suffixes for the RayCluster and its services); our RayJob carries the job's name.
MAX_NAME_LENGTH = 47
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Where models, datasets and outputs can live. A bare path is a local path (absolute in a
# cluster; `finetune run` also resolves relative ones against the job file).
SOURCE_PATTERN = r"^(hf://[^/\s]+(/[^\s]+)?|s3://[a-z0-9][-a-z0-9.]*[a-z0-9](/\S*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\S*)?|file://\S+|[^:\s]+)$"
DESTINATION_PATTERN = r"^(s3://[a-z0-9][-a-z0-9.]*[a-z0-9](/\S*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\S*)?|file://\S+|[^:\s]+)$"
DNS_1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

# Spec sections that may change while a job runs; everything else is frozen until the job
# is suspended or finished, because the running trainer cannot pick such a change up.
MUTABLE_WHILE_RUNNING = ("runPolicy",)
ACTIVE_PHASES = ("Initializing", "Running")


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; `field_path` names the field the error is about."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def is_set(path: str) -> str:
    """CEL for "the field is present and not null": null-safe in the API server and cel-python."""
    return f"(has({path}) && type({path}) != null_type)"


def validations(*rules: dict[str, str]) -> ConfigDict:
    entries: list[Any] = list(rules)
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": entries})


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        serialize_by_alias=True,
        use_attribute_docstrings=False,
        allow_inf_nan=False,  # JSON cannot carry NaN or infinity
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it appears in a manifest: camelCase, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------- spec


class SecretRef(ApiModel):
    name: str = Field(
        description="Name of a Secret in the job's namespace. Its keys become environment "
        "variables of the trainer (e.g. HF_TOKEN, AWS_ACCESS_KEY_ID).",
        min_length=1,
        max_length=253,
        pattern=DNS_1123_SUBDOMAIN,
    )


class ModelSpec(ApiModel):
    source: str = Field(
        description="Base model: hf://org/name, s3://bucket/prefix, pvc://claim/path or a "
        "path to a Hugging Face format directory.",
        min_length=1,
        max_length=1024,
        pattern=SOURCE_PATTERN,
    )
    revision: str = Field(
        "main", description="Branch, tag or commit of an hf:// model.", max_length=256
    )
    secret_ref: SecretRef | None = Field(
        None, description="Secret with credentials for the model and data sources."
    )
    trust_remote_code: bool = Field(
        False,
        description="Allow Python code shipped with the model to run. Off by default: "
        "enable only for models you trust.",
    )


DataFormat = Literal["messages", "alpaca", "text", "preference"]


class DataSource(ApiModel):
    source: str = Field(
        description="Data location: a JSONL, JSON or Parquet file or folder as a path, "
        "file://, pvc://claim/path or s3://bucket/key; or an hf://org/dataset.",
        min_length=1,
        max_length=1024,
        pattern=SOURCE_PATTERN,
    )
    format: DataFormat = Field(
        "messages",
        description="Record shape. messages: {messages: [{role, content}]} (OpenAI style); "
        "alpaca: {instruction, input, output}; text: {text}; "
        "preference: {prompt, chosen, rejected}, as strings or lists of messages (objective "
        "dpo learns the preference; sft learns prompt + chosen).",
    )
    split: str | None = Field(
        None, description="Split of an hf:// dataset (default: train).", max_length=256
    )


class MixSource(DataSource):
    weight: float = Field(
        description="Share of training records drawn from this source, relative to the "
        "main train data (weight 1.0); replay data against catastrophic forgetting.",
        gt=0,
        le=100,
    )


PiiKind = Literal[
    "person",
    "location",
    "organization",
    "date",
    "date_of_birth",
    "medical_record_number",
    "passport",
    "drivers_license",
    "street_address",
    "phone",
    "email",
    "url",
    "iban",
    "credit_card",
    "ssn",
    "ip_address",
    "secret",
]
PII_KINDS: tuple[str, ...] = get_args(PiiKind)
# Organisations are not personal identifiers under HIPAA Safe Harbor or GDPR, and NER
# confuses them with product and drug names: acted on only when listed.
DEFAULT_PII_KINDS: list[PiiKind] = [kind for kind in get_args(PiiKind) if kind != "organization"]


class PiiSpec(ApiModel):
    entities: list[PiiKind] = Field(
        default_factory=lambda: list(DEFAULT_PII_KINDS),
        description="Kinds of personal data to redact (default: all but organization).",
        min_length=1,
        max_length=len(PII_KINDS),
    )
    score_threshold: float = Field(
        0.5,
        description="Detections scoring below this (0-1) are kept; ambiguous identifiers "
        "(record, passport and licence numbers) reach it only with a context word nearby.",
        ge=0,
        le=1,
    )
    allow_list: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        description="Terms never redacted, matched case-insensitively as whole words "
        "(product names, drug names).",
        max_length=10_000,
    )
    mode: Literal["mask", "pseudonymize"] = Field(
        "mask",
        description="mask: typed placeholders such as <PERSON>; pseudonymize: numbered "
        "placeholders such as <PERSON_1>, the same number for the same value in every "
        "turn of a record.",
    )


class CleaningSpec(ApiModel):
    dedup: Literal["none", "exact", "near"] = Field(
        "exact",
        description="Duplicate removal on normalised content: none, exact, or near "
        "(MinHash, see nearDedupThreshold).",
    )
    near_dedup_threshold: float = Field(
        0.85,
        description="Jaccard similarity above which two records count as near duplicates.",
        gt=0,
        le=1,
    )
    redact_pii: bool = Field(
        True,
        alias="redactPII",
        description="De-identify records before training: names, places, dates, "
        "record/ID numbers, addresses, contact details, card and bank numbers and secrets "
        "become typed placeholders such as <PERSON> (see pii).",
    )
    pii: PiiSpec = Field(
        default_factory=PiiSpec,
        description="What redactPII detects and how it replaces it.",
    )
    remove_leakage: bool = Field(
        True,
        description="Drop validation/test records whose content or prompt is in train, and "
        "test records also in validation.",
    )
    overlength: Literal["truncate", "drop", "chunk"] = Field(
        "truncate",
        description="What to do with records longer than maxSeqLength tokens: truncate, "
        "drop, or chunk into several rows.",
    )
    min_chars: int = Field(
        1,
        description="Records whose normalised content is shorter than this many "
        "characters are removed as too short.",
        ge=0,
        le=100_000,
    )
    max_malformed_fraction: float = Field(
        0.1,
        description="The job fails when more than this fraction of records is malformed; "
        "below it, malformed records are counted and reported, never silently dropped.",
        ge=0,
        le=1,
    )


class DatasetSpec(ApiModel):
    model_config = validations(
        cel(
            "self.validationSplit + self.testSplit < 1.0",
            "validationSplit + testSplit must be below 1 (some records must remain for training)",
            ".testSplit",
        ),
    )

    train: DataSource = Field(description="Training data.")
    validation: DataSource | None = Field(
        None, description="Validation data; when absent, validationSplit of train is held out."
    )
    test: DataSource | None = Field(
        None, description="Test data; when absent, testSplit of train is held out."
    )
    validation_split: float = Field(
        0.05,
        description="Fraction of train held out for validation when no validation source is given.",
        ge=0,
        lt=1,
    )
    test_split: float = Field(
        0.0,
        description="Fraction of train held out for testing when no test source is given.",
        ge=0,
        lt=1,
    )
    max_seq_length: int = Field(
        2048, description="Longest row in tokens (packed rows included).", ge=16, le=1_048_576
    )
    packing: bool = Field(
        True,
        description="Pack several records into each row up to maxSeqLength; packed "
        "documents never attend to each other.",
    )
    train_on_prompt: bool = Field(
        False,
        description="Compute the loss on prompt tokens too; by default only assistant / "
        "completion tokens count.",
    )
    chat_template: str | None = Field(
        None,
        description="Jinja chat template; default: the tokenizer's own.",
        max_length=65_536,
    )
    cleaning: CleaningSpec = Field(
        default_factory=CleaningSpec, description="Data hygiene applied before training."
    )
    mix: list[MixSource] = Field(
        default_factory=list,
        description="Replay data interleaved into train at the given weights.",
        max_length=16,
    )


class LoraSpec(ApiModel):
    r: int = Field(16, description="LoRA rank.", ge=1, le=1024)
    alpha: float = Field(32, description="LoRA scaling numerator (scale = alpha / r).", gt=0)
    dropout: float = Field(0.05, description="Dropout on the LoRA input.", ge=0, lt=1)
    target_modules: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=lambda: ["all-linear"],
        description="Module names to adapt, or all-linear for every linear layer but the "
        "output head.",
        min_length=1,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    _target_modules_once = field_validator("target_modules")(kube_values.once_each)


class DpoSpec(ApiModel):
    model_config = validations(
        cel(
            "self.labelSmoothing == 0.0 || self.lossType == 'robust'",
            "labelSmoothing is the probability that a preference label is flipped, which "
            "only the robust loss models: set lossType: robust or labelSmoothing: 0",
            ".labelSmoothing",
        )
    )

    beta: float = Field(
        0.1,
        description="How far the model may move from the reference (the base model): "
        "higher stays closer. For ipo it is the regularisation tau.",
        gt=0,
        le=100,
    )
    loss_type: Literal["sigmoid", "ipo", "robust"] = Field(
        "sigmoid",
        description="sigmoid: the DPO loss; ipo: IPO's squared loss on per-token log "
        "ratios; robust: DPO corrected for labelSmoothing flipped labels.",
    )
    label_smoothing: float = Field(
        0.0,
        description="robust only: the probability that a preference label is wrong.",
        ge=0,
        lt=0.5,
    )


class MethodSpec(ApiModel):
    type: Literal["lora", "qlora", "full"] = Field(
        "lora",
        description="lora: low-rank adapters; qlora: LoRA on a 4-bit NF4 base model "
        "(needs a CUDA GPU); full: every weight trained.",
    )
    objective: Literal["sft", "dpo"] = Field(
        "sft",
        description="sft: learn the answers (next-token loss); dpo: Direct Preference "
        "Optimization on preference records (prefer chosen over rejected). Either works "
        "with every type.",
    )
    lora: LoraSpec = Field(
        default_factory=LoraSpec, description="Adapter settings for lora and qlora."
    )
    dpo: DpoSpec = Field(default_factory=DpoSpec, description="Settings of objective dpo.")


class Hyperparameters(ApiModel):
    epochs: int = Field(3, description="Passes over the training data.", ge=1, le=1000)
    max_steps: int | None = Field(
        None, description="Stop after this many optimizer steps (overrides epochs).", ge=1
    )
    learning_rate: float = Field(2.0e-4, description="Peak learning rate.", gt=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warmup: cosine, linear or constant."
    )
    warmup_ratio: float = Field(
        0.03, description="Fraction of steps with linear warmup.", ge=0, lt=1
    )
    batch_size: int = Field(
        32,
        description="Global batch in sequences (packed rows) per optimizer step, across "
        "all workers; gradient accumulation makes up the difference.",
        ge=1,
        le=65_536,
    )
    micro_batch_size: int | None = Field(
        None,
        description="Sequences per device per forward pass; null chooses automatically.",
        ge=1,
        le=4096,
    )
    weight_decay: float = Field(0.0, description="AdamW weight decay.", ge=0, le=1)
    max_grad_norm: float = Field(
        1.0, description="Gradient clipping norm; 0 turns clipping off.", ge=0
    )
    gradient_checkpointing: Annotated[
        bool | Literal["auto"],
        # true, false or "auto": a structural schema has no bool-or-string type, so the
        # field is left untyped and its CEL rule admits only those three.
        WithJsonSchema(
            {
                "x-kubernetes-preserve-unknown-fields": True,
                "x-kubernetes-validations": [
                    cel(
                        "type(self) == bool || (type(self) == string && self == 'auto')",
                        "must be true, false or auto",
                    )
                ],
            }
        ),
    ] = Field(
        "auto",
        description="Recompute activations in backward to save memory (about a third more "
        "compute). auto: on only when the trainer's memory estimate says the activations "
        "would not fit on the device otherwise.",
    )
    torch_compile: bool = Field(
        False,
        description="Compile the model with torch.compile: faster steps on GPUs after a "
        "compilation of a minute or more at the start of each run.",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="auto: bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU. "
        "bf16 on a CPU with AMX or AVX512-BF16 instructions trains in bf16 there; other "
        "CPUs train in fp32, with a note.",
    )
    liger_kernels: bool = Field(
        False,
        description="On CUDA: Liger's Triton kernels, its fused linear cross-entropy for the "
        "loss and RMSNorm, RoPE and SwiGLU where the model has them (needs liger-kernel, the "
        "gpu extra). Ignored on CPU.",
    )
    seed: int = Field(
        42,
        description="Seed for data splits, shuffling and initialisation.",
        ge=0,
        le=2**32 - 1,  # numpy's and transformers' set_seed take 32 bits
    )


class EarlyStopping(ApiModel):
    patience: int = Field(
        3, description="Evaluations without improvement before stopping.", ge=1, le=1000
    )
    min_delta: float = Field(
        0.0, description="Smallest fall in eval loss that counts as improvement.", ge=0
    )


EvalMetric = Literal["loss", "perplexity", "accuracy", "exact_match", "bleu", "rouge", "f1"]
TEST_ONLY_METRICS = ("accuracy", "exact_match", "bleu", "rouge", "f1")
MAX_RETENTION_SETS = 8


class RetentionSource(DataSource):
    name: str | None = Field(
        None,
        description="Name in metrics.json, the model card and status (default: the "
        "source's file or folder name without suffixes).",
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$",
    )

    @property
    def display_name(self) -> str:
        """`name`, else the source's last path part without suffixes (`general` for
        pvc://data/general.jsonl.gz)."""
        if self.name:
            return self.name
        last = self.source.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
        return re.sub(r"[^-_.A-Za-z0-9]", "_", last)[:63] or "retention"


class EvaluationSpec(ApiModel):
    every_steps: int | None = Field(
        None, description="Evaluate every N optimizer steps; null: once per epoch.", ge=1
    )
    early_stopping: EarlyStopping | None = Field(
        None, description="Stop when the validation loss stops improving."
    )
    metrics: list[EvalMetric] = Field(
        default_factory=lambda: list[EvalMetric](["loss", "perplexity"]),
        description="loss and perplexity on validation and test; accuracy (token), "
        "exact_match, bleu, rouge (ROUGE-L) and f1 (token overlap, or macro-F1 over a "
        "small label set) on the test set.",
        max_length=7,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    max_generation_samples: int = Field(
        64,
        description="Test records used for generation metrics (exact_match, bleu, rouge, f1).",
        ge=1,
        le=100_000,
    )
    retention: list[RetentionSource] = Field(
        default_factory=list,
        description="General-knowledge data never trained on: its loss is measured on the "
        "base model before training and on the result after, to show forgetting.",
        max_length=MAX_RETENTION_SETS,
    )
    max_retention_loss_increase: float | None = Field(
        None,
        description="Largest acceptable rise of a retention set's loss (nats per token, "
        "after minus before). Exceeded: the model is still written, and the job gets the "
        "condition RetentionRegressed and a Warning Event.",
        ge=0,
        le=100,
    )

    _metrics_once = field_validator("metrics")(kube_values.once_each)

    @field_validator("retention")
    @classmethod
    def _retention_names_once(cls, sources: list[RetentionSource]) -> list[RetentionSource]:
        names = [source.display_name for source in sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(
                f"retention sets must have distinct names, {', '.join(repeated)} repeats: "
                "give each a `name`"
            )
        return sources


class DeepSpeedSpec(ApiModel):
    model_config = validations(
        cel(
            "!self.offloadParams || self.zeroStage == 3",
            "offloadParams needs zeroStage 3",
            ".offloadParams",
        ),
        cel(
            "!self.offloadOptimizer || self.zeroStage >= 1",
            "offloadOptimizer needs zeroStage 1, 2 or 3",
            ".offloadOptimizer",
        ),
    )

    zero_stage: int = Field(2, description="DeepSpeed ZeRO stage (0-3).", ge=0, le=3)
    offload_optimizer: bool = Field(False, description="Keep optimizer state in CPU memory.")
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (ZeRO-3 only).")


class Toleration(ApiModel):
    # The pod's own validation, so a bad toleration is refused with the job, not its pods.
    model_config = validations(
        cel(
            f"self.operator == 'Exists' || ({is_set('self.key')} && self.key != '')",
            "key is required unless operator is Exists (an empty key with Exists tolerates "
            "every taint)",
        ),
        cel(
            f"self.operator != 'Exists' || !{is_set('self.value')} || self.value == ''",
            "operator Exists matches any value: leave value out (or use operator Equal)",
        ),
        cel(
            f"!{is_set('self.tolerationSeconds')} || "
            f"({is_set('self.effect')} && self.effect == 'NoExecute')",
            "tolerationSeconds applies only to effect NoExecute",
        ),
        cel(
            f"!{is_set('self.key')} || !self.key.matches('{kube_values.LONG_KEY_PREFIX}')",
            "key prefix (before '/') must be at most 253 characters",
        ),
    )

    key: str | None = Field(
        None,
        description="Taint key; empty with Exists matches all.",
        max_length=kube_values.MAX_LABEL_KEY,
        pattern=kube_values.LABEL_KEY,
    )
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: kube_values.LabelValue | None = Field(None, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] | None = Field(
        None, description="Taint effect to tolerate; empty tolerates all effects."
    )
    toleration_seconds: int | None = Field(
        None, description="How long a NoExecute taint is tolerated.", ge=0
    )


class ResourcesSpec(ApiModel):
    workers: int = Field(
        1, description="Ray worker pods; each runs gpusPerWorker training ranks.", ge=1, le=1024
    )
    gpus_per_worker: int = Field(
        1, description="nvidia.com/gpu per worker pod (0 trains on CPU).", ge=0, le=16
    )
    cpus_per_worker: int = Field(8, description="CPU cores per worker pod.", ge=1, le=1024)
    memory_per_worker: str = Field(
        "64Gi",
        description="Memory per worker pod as a Kubernetes quantity, e.g. 64Gi.",
        pattern=kube_values.POSITIVE_QUANTITY,
        max_length=32,
    )
    node_selector: dict[str, kube_values.LabelValue] = Field(
        default_factory=dict, description="Node labels the worker pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations of the head and worker pods.", max_length=32
    )
    priority_class_name: str | None = Field(
        None,
        description="PriorityClass of the Ray pods.",
        max_length=253,
        pattern=DNS_1123_SUBDOMAIN,
    )
    image: str | None = Field(
        None,
        description="Trainer image; default: the operator's configured trainer image.",
        max_length=1024,
        pattern=kube_values.IMAGE_REFERENCE,
    )

    _label_keys = field_validator("node_selector")(kube_values.label_keys)


class CheckpointingSpec(ApiModel):
    every_steps: int = Field(
        500, description="Save a resumable checkpoint every N optimizer steps.", ge=1
    )
    keep: int = Field(
        2, description="Newest checkpoints kept; older ones are deleted.", ge=1, le=100
    )


class OutputSpec(ApiModel):
    destination: str = Field(
        description="Where adapter/, model/, checkpoints/, metrics and the model card go: "
        "s3://bucket/prefix, pvc://claim/path or a path.",
        min_length=1,
        max_length=1024,
        pattern=DESTINATION_PATTERN,
    )
    merge_adapter: bool = Field(
        False, description="Also write the base model with the adapter merged into model/."
    )


class RunPolicy(ApiModel):
    suspend: bool = Field(
        False,
        description="true stops the Ray cluster and keeps the job; false resumes it from "
        "its newest checkpoint.",
    )
    backoff_limit: int = Field(
        2, description="Whole-cluster retries (RayJob backoffLimit).", ge=0, le=100
    )
    active_deadline_seconds: int | None = Field(
        None,
        description="Fail the job when it runs longer than this.",
        ge=1,
        le=2**31 - 1,  # the RayJob's activeDeadlineSeconds is an int32
    )
    ttl_seconds_after_finished: int | None = Field(
        None, description="Delete the finished job (and its children) after this long.", ge=0
    )
    queue_name: str | None = Field(
        None,
        description="Kueue LocalQueue; set as the kueue.x-k8s.io/queue-name label.",
        min_length=1,
        max_length=kube_values.MAX_LABEL_VALUE,
        pattern=kube_values.LABEL_VALUE,
    )


# Hyperparameters a sweep may search: the key users write -> where it lives in the spec.
# Batch size, epochs and steps are left out on purpose: every trial trains on the same
# tokenised rows and step count, so the data stage runs once for all of them.
SWEEP_PARAMETERS: dict[str, tuple[str, ...]] = {
    "learningRate": ("hyperparameters", "learningRate"),
    "lrScheduler": ("hyperparameters", "lrScheduler"),
    "warmupRatio": ("hyperparameters", "warmupRatio"),
    "weightDecay": ("hyperparameters", "weightDecay"),
    "maxGradNorm": ("hyperparameters", "maxGradNorm"),
    "lora.r": ("method", "lora", "r"),
    "lora.alpha": ("method", "lora", "alpha"),
    "lora.dropout": ("method", "lora", "dropout"),
    "dpo.beta": ("method", "dpo", "beta"),
}
# A choice's values are numbers or strings (lrScheduler); a structural schema cannot say
# "number or string", so the CRD keeps them untyped and these models check them.
ChoiceValue = Annotated[
    int | float | str,
    WithJsonSchema({
        "x-kubernetes-preserve-unknown-fields": True,
        "description": "A number, or a string for lrScheduler.",
        "x-kubernetes-validations": [cel(
            "type(self) == int || type(self) == double || type(self) == string",
            "must be a number or a string",
        )],
    }),
]  # fmt: skip


class SearchDomain(ApiModel):
    model_config = validations(
        cel(
            f"({is_set('self.uniform')} ? 1 : 0) + ({is_set('self.logUniform')} ? 1 : 0)"
            f" + ({is_set('self.choice')} ? 1 : 0) == 1",
            "set exactly one of uniform, logUniform or choice",
        ),
    )

    uniform: list[float] | None = Field(
        None, description="[low, high]: any value in between, evenly.", min_length=2,
        max_length=2,
    )  # fmt: skip
    log_uniform: list[float] | None = Field(
        None, description="[low, high], both > 0: evenly on a log scale (learning rates).",
        min_length=2, max_length=2,
    )  # fmt: skip
    choice: list[ChoiceValue] | None = Field(
        None, description="One of these values.", min_length=1, max_length=64
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchDomain:
        # The CEL rule says the same at admission; here it holds inside the map as well.
        if sum(d is not None for d in (self.uniform, self.log_uniform, self.choice)) != 1:
            raise ValueError("set exactly one of uniform, logUniform or choice")
        return self

    def values_to_check(self) -> list[Any]:
        """The values a trial may get at the edges: each must be valid for its field."""
        if self.choice is not None:
            return list(self.choice)
        bounds = self.uniform if self.uniform is not None else self.log_uniform
        return list(bounds or [])


class SweepScheduler(ApiModel):
    type: Literal["asha", "none"] = Field(
        "asha", description="asha: stop trials early whose metric trails the others'; "
        "none: every trial runs to the end.",
    )  # fmt: skip
    grace_period: int | None = Field(
        None, description="Steps a trial trains before it can be stopped; null = one "
        "evaluation interval.", ge=1,
    )  # fmt: skip
    reduction_factor: float = Field(
        2.0, description="ASHA keeps about 1/reductionFactor of the trials at each rung.",
        gt=1, le=100,
    )  # fmt: skip


# The model whose field each SWEEP_PARAMETERS entry ends in, by the section holding it.
_SWEEP_SECTIONS: dict[str, type[ApiModel]] = {
    "hyperparameters": Hyperparameters,
    "lora": LoraSpec,
    "dpo": DpoSpec,
}


class SweepSpec(ApiModel):
    search_space: dict[str, SearchDomain] = Field(
        description="Hyperparameters to search, by name: learningRate, lrScheduler, "
        "warmupRatio, weightDecay, maxGradNorm, lora.r, lora.alpha, lora.dropout, dpo.beta "
        "(objective dpo). E.g. learningRate: {logUniform: [1e-5, 1e-3]}, lora.r: "
        "{choice: [8, 16]}.",
        min_length=1,
        max_length=len(SWEEP_PARAMETERS),
    )
    trials: int = Field(8, description="Trials to run in all.", ge=1, le=1000)
    max_concurrent_trials: int = Field(
        1, description="Trials training at the same time (each one Ray Train run with "
        "resources.workers workers).", ge=1, le=100,
    )  # fmt: skip
    metric: Literal["eval_loss", "eval_perplexity"] = Field(
        "eval_loss", description="The validation metric trials are ranked by."
    )
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher is better.")
    scheduler: SweepScheduler = Field(
        default_factory=SweepScheduler, description="Early stopping of poor trials."
    )
    seed: int | None = Field(
        None, description="Optuna's sampler seed; null = hyperparameters.seed.",
        ge=0, le=2**32 - 1,
    )  # fmt: skip

    @field_validator("search_space")
    @classmethod
    def _known_parameters(cls, space: dict[str, SearchDomain]) -> dict[str, SearchDomain]:
        for name, domain in space.items():
            if name not in SWEEP_PARAMETERS:
                known = ", ".join(SWEEP_PARAMETERS)
                raise ValueError(f"{name}: not a parameter a sweep can search; one of {known}")
            section = _SWEEP_SECTIONS[SWEEP_PARAMETERS[name][-2]]
            field = SWEEP_PARAMETERS[name][-1]
            if domain.log_uniform is not None and min(domain.log_uniform) <= 0:
                raise ValueError(f"{name}: logUniform bounds must be > 0")
            for bounds in (domain.uniform, domain.log_uniform):
                if bounds is not None and bounds[0] > bounds[1]:
                    raise ValueError(f"{name}: the low bound {bounds[0]} exceeds {bounds[1]}")
            for value in domain.values_to_check():
                try:
                    section.model_validate({field: value})
                except ValidationError as error:
                    reason = error.errors()[0]["msg"]
                    raise ValueError(f"{name}: {value!r}: {reason}") from None
        return space


class FineTuneJobSpec(ApiModel):
    model_config = validations(
        cel(
            "self.method.type != 'qlora' || self.resources.gpusPerWorker >= 1",
            "qlora quantises the base model with bitsandbytes and needs a CUDA GPU: set "
            "resources.gpusPerWorker >= 1 or use method.type lora",
            ".method.type",
        ),
        cel(
            "!self.output.mergeAdapter || self.method.type != 'full'",
            "mergeAdapter applies to lora and qlora; a full fine-tune already writes model/",
            ".output.mergeAdapter",
        ),
        cel(
            f"!{is_set('self.evaluation.earlyStopping')} || {is_set('self.dataset.validation')}"
            " || self.dataset.validationSplit > 0.0",
            "earlyStopping needs validation data: set dataset.validation or "
            "dataset.validationSplit > 0",
            ".evaluation.earlyStopping",
        ),
        cel(
            "!self.evaluation.metrics.exists(m, m in ['accuracy', 'exact_match', 'bleu', "
            f"'rouge', 'f1']) || {is_set('self.dataset.test')} || self.dataset.testSplit > 0.0",
            "accuracy, exact_match, bleu, rouge and f1 are computed on the test set: set "
            "dataset.test or dataset.testSplit > 0",
            ".evaluation.metrics",
        ),
        cel(
            "self.method.objective != 'dpo' || (self.dataset.train.format == 'preference'"
            + "".join(
                f" && (!{is_set(f'self.dataset.{split}')} || "
                f"self.dataset.{split}.format == 'preference')"
                for split in ("validation", "test")
            )
            + " && self.dataset.mix.all(m, m.format == 'preference'))",
            "objective dpo learns from preference records ({prompt, chosen, rejected}): set "
            "the format of dataset.train, validation, test and mix to preference",
            ".method.objective",
        ),
        cel(
            "self.method.objective != 'dpo' || self.method.type != 'full' || "
            "self.deepspeed.zeroStage != 3",
            "objective dpo with type full keeps a frozen reference copy of the base model on "
            "every device, which ZeRO-3 does not partition: use zeroStage 2, or type lora "
            "(its reference is the base model itself, no copy)",
            ".method.objective",
        ),
        cel(
            "self.method.objective != 'dpo' || self.dataset.cleaning.overlength != 'chunk'",
            "objective dpo cannot cut a preference pair into chunks: use overlength "
            "truncate or drop",
            ".dataset.cleaning.overlength",
        ),
        cel(
            "self.hyperparameters.batchSize >= self.resources.workers * "
            "(self.resources.gpusPerWorker > 0 ? self.resources.gpusPerWorker : 1)",
            "batchSize is global and must be at least the number of training ranks "
            "(workers x gpusPerWorker)",
            ".hyperparameters.batchSize",
        ),
        cel(
            f"!{is_set('self.hyperparameters.microBatchSize')} || "
            "self.hyperparameters.microBatchSize <= self.hyperparameters.batchSize",
            "microBatchSize must not exceed batchSize",
            ".hyperparameters.microBatchSize",
        ),
        cel(
            f"!{is_set('self.sweep')} || {is_set('self.dataset.validation')}"
            " || self.dataset.validationSplit > 0.0",
            "a sweep ranks trials by a validation metric: set dataset.validation or "
            "dataset.validationSplit > 0",
            ".sweep",
        ),
        cel(
            f"!{is_set('self.sweep')} || self.method.type != 'full' || "
            "!self.sweep.searchSpace.exists(k, k.startsWith('lora.'))",
            "lora.* parameters need method.type lora or qlora",
            ".sweep.searchSpace",
        ),
        cel(
            f"!{is_set('self.sweep')} || self.method.objective == 'dpo' || "
            "!('dpo.beta' in self.sweep.searchSpace)",
            "dpo.beta applies to method.objective dpo",
            ".sweep.searchSpace",
        ),
    )

    model: ModelSpec = Field(description="The base model to fine-tune.")
    dataset: DatasetSpec = Field(description="Training, validation and test data and its cleaning.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="lora, qlora or full.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="Optimisation settings."
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="When and what to evaluate."
    )
    deepspeed: DeepSpeedSpec = Field(
        default_factory=DeepSpeedSpec, description="DeepSpeed ZeRO settings."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="Ray workers, GPUs and scheduling."
    )
    checkpointing: CheckpointingSpec = Field(
        default_factory=CheckpointingSpec, description="Resumable checkpoints."
    )
    output: OutputSpec = Field(description="Where results go.")
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy, description="Suspension, retries, deadlines and clean-up."
    )
    sweep: SweepSpec | None = Field(
        None,
        description="Search hyperparameters: several trials on Ray Tune (Optuna, ASHA); the "
        "best trial's adapter becomes the output.",
    )


# ---------------------------------------------------------------------------- status


class Phase(enum.StrEnum):
    PENDING = "Pending"
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"

    def is_terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)

    def is_active(self) -> bool:
        return self.value in ACTIVE_PHASES


class ConditionType(enum.StrEnum):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    # Whether the running trainer's progress can be read; False after reads kept failing.
    PROGRESS_AVAILABLE = "ProgressAvailable"
    # True when a retention set's loss rose past evaluation.maxRetentionLossIncrease.
    RETENTION_REGRESSED = "RetentionRegressed"


class Condition(ApiModel):
    type: ConditionType = Field(
        description="Running, Succeeded, Failed, Suspended, ProgressAvailable or "
        "RetentionRegressed."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str | None = Field(None, description="Machine-readable reason (CamelCase).")
    message: str | None = Field(None, description="Human-readable details.")
    last_transition_time: str | None = Field(
        None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        None, description="Spec generation this condition reflects."
    )


class BestTrial(ApiModel):
    id: str = Field(description="The trial's id (its folder under the output's trials/).")
    metric: float = Field(description="Its final value of sweep.metric.")
    hyperparameters: dict[str, ChoiceValue] = Field(
        default_factory=dict, description="The values it was given, by searchSpace name."
    )


class SweepProgress(ApiModel):
    trials: int = Field(description="Trials the sweep runs in all.")
    done: int = Field(0, description="Trials that trained to the end.")
    running: int = Field(0, description="Trials training now.")
    stopped: int = Field(0, description="Trials the scheduler (ASHA) stopped early.")
    failed: int = Field(0, description="Trials that failed.")
    best: BestTrial | None = Field(None, description="The best finished trial so far.")
    display: str | None = Field(None, description="e.g. 3/8 (1 stopped), for kubectl get.")


class Progress(ApiModel):
    step: int | None = Field(None, description="Optimizer steps done.")
    total_steps: int | None = Field(None, description="Optimizer steps planned.")
    epoch: float | None = Field(None, description="Epochs done (fractional).")
    percent: float | None = Field(None, description="step / totalSteps x 100.")
    train_loss: float | None = Field(None, description="Latest training loss.")
    eval_loss: float | None = Field(None, description="Latest validation loss.")
    best_eval_loss: float | None = Field(
        None, description="Lowest validation loss so far (the base model's included)."
    )
    early_stopped: bool | None = Field(None, description="True once early stopping ended training.")
    reward_accuracy: float | None = Field(
        None, description="dpo: share of the latest step's pairs whose chosen answer won."
    )
    reward_margin: float | None = Field(
        None, description="dpo: the latest step's mean chosen minus rejected reward."
    )
    eval_reward_accuracy: float | None = Field(
        None, description="dpo: reward accuracy on the validation pairs, latest evaluation."
    )
    tokens_per_second: float | None = Field(
        None, description="Non-padding tokens processed per second."
    )
    eta_seconds: float | None = Field(None, description="Estimated seconds left.")
    display: str | None = Field(None, description="step/totalSteps (percent) for kubectl get.")
    eta: str | None = Field(None, description="Estimated time left, e.g. 1h05m, for kubectl get.")
    updated_at: str | None = Field(None, description="When this progress was read (RFC 3339).")
    sweep: SweepProgress | None = Field(None, description="A sweep's trials, for sweeps.")


class CheckpointRef(ApiModel):
    step: int = Field(description="Optimizer step of the checkpoint.")
    uri: str = Field(description="Where the checkpoint is stored.")


class RetentionResult(ApiModel):
    name: str = Field(description="The retention set (evaluation.retention[].name).")
    loss_before: float = Field(description="Mean token loss of the base model.")
    loss_after: float = Field(description="Mean token loss of the model the outputs hold.")
    loss_increase: float = Field(description="lossAfter - lossBefore (negative: it improved).")
    exceeded: bool = Field(
        False, description="Whether lossIncrease passed evaluation.maxRetentionLossIncrease."
    )


class Result(ApiModel):
    output_uri: str | None = Field(None, description="Where the outputs were written.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Final metrics (train_loss, eval_loss, test_*)."
    )
    serving_uri: str | None = Field(
        None,
        description="Where the serving manifests are (vllm.yaml, kserve.yaml): the output's "
        "serving/ folder. Unset when the output is a local path no cluster can mount.",
    )
    retention: list[RetentionResult] | None = Field(
        None,
        description="Loss on each evaluation.retention set before and after training.",
        max_length=MAX_RETENTION_SETS,
    )


class FineTuneJobStatus(ApiModel):
    phase: Phase | None = Field(
        None, description="Pending, Initializing, Running, Succeeded, Failed or Suspended."
    )
    reason: str | None = Field(None, description="Why the job is in this phase (CamelCase).")
    message: str | None = Field(None, description="Details, naming the field or failing step.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Running, Succeeded, Failed, Suspended; ProgressAvailable while running; "
        "RetentionRegressed once a result measured retention against a threshold.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(None, description="Spec generation last acted on.")
    ray_job_name: str | None = Field(None, description="The RayJob running this job.")
    attempts: int | None = Field(None, description="Ray cluster attempts so far.")
    start_time: str | None = Field(None, description="When training started (RFC 3339).")
    completion_time: str | None = Field(None, description="When the job finished (RFC 3339).")
    progress: Progress | None = Field(None, description="Training progress.")
    last_checkpoint: CheckpointRef | None = Field(None, description="Newest saved checkpoint.")
    result: Result | None = Field(None, description="Outputs and final metrics.")


# ---------------------------------------------------------------------------- the object


class ObjectMeta(BaseModel):
    """The part of metadata our code reads; everything else passes through untouched."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    namespace: str | None = Field(None, max_length=63, pattern=kube_values.DNS_1123_LABEL)
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class FineTuneJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_version: Literal["finetune.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec = Field(description="What to fine-tune, on which data, how and where.")
    status: FineTuneJobStatus | None = Field(
        None, description="Observed state, written by the operator."
    )


FROZEN_WHILE_RUNNING = [
    to_camel(name)
    for name in FineTuneJobSpec.model_fields
    if to_camel(name) not in MUTABLE_WHILE_RUNNING
]


def _unchanged(name: str) -> str:
    """CEL: spec.<name> is the same in both; an optional section may be absent from both."""
    if name not in OPTIONAL_SECTIONS:
        return f"oldSelf.spec.{name} == self.spec.{name}"
    old, new = f"oldSelf.spec.{name}", f"self.spec.{name}"
    return f"({is_set(old)} == {is_set(new)} && (!{is_set(new)} || {old} == {new}))"


OPTIONAL_SECTIONS = ("sweep",)  # spec sections with no default: absent unless written

# Rules on the whole object: what only the object root can see (its name, its status).
ROOT_VALIDATIONS = [
    cel(
        f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        f"name must be at most {MAX_NAME_LENGTH} characters (it names the job's RayJob)",
        ".metadata.name",
    ),
    cel(
        f"self.metadata.name.matches('{DNS_1035_LABEL}')",
        "name must be a DNS-1035 label (lower-case letters, digits and '-', starting with a "
        "letter): it names the job's RayJob",
        ".metadata.name",
    ),
    cel(
        f"!{is_set('oldSelf.status')} || !{is_set('oldSelf.status.phase')} || "
        f"!(oldSelf.status.phase in {list(ACTIVE_PHASES)}) || "
        + " && ".join(_unchanged(name) for name in FROZEN_WHILE_RUNNING),
        "spec cannot change while the job is Initializing or Running (only spec.runPolicy "
        "can); suspend the job first",
        ".spec",
    ),
]
