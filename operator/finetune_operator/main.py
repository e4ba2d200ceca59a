"""`finetune-operator`: run the operator (in-cluster config, else KUBECONFIG)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging

import kopf

from finetune_operator.metrics import OperatorMetrics
from finetune_operator.runner import run_operator
from finetune_operator.settings import Settings


def cluster_login() -> kopf.ConnectionInfo:
    """The service account's credentials inside a cluster, else the current kubeconfig."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError(
            "no credentials: not running in a cluster and no KUBECONFIG or ~/.kube/config"
        )
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finetune-operator",
        description="Turn FineTuneJobs into KubeRay RayJobs and report their progress.",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument("--health-port", type=int, default=8081, help="liveness/readiness probe")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics")
    parser.add_argument("--trainer-image", default=None, help="image for jobs that set none")
    parser.add_argument(
        "--peering", default=None, metavar="NAME",
        help="coordinate replicas through kopf peering NAME (needs kopf's peering CRD)",
    )  # fmt: skip
    parser.add_argument("--log-format", choices=["json", "text"], default="json")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log_format = kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL
    kopf.configure(verbose=args.verbose, log_format=log_format)
    # cel-python logs every evaluation step at DEBUG; that would drown the operator's logs.
    logging.getLogger("celpy").setLevel(logging.WARNING)
    try:
        settings = Settings.from_env()
    except ValueError as error:
        logging.getLogger(__name__).error("%s", error)
        return 2
    if args.trainer_image:
        settings = dataclasses.replace(settings, trainer_image=args.trainer_image)
    metrics = OperatorMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    asyncio.run(
        run_operator(
            settings,
            cluster_login,
            namespaces=args.namespace,
            liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
            peering=args.peering,
            metrics=metrics,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
