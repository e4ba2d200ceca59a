"""`python -m finetune_trainer.serving.fetch --into DIR URI...`: the vLLM pod's init container.

Downloads each s3:// folder to DIR/BUCKET/KEY with the trainer's own S3 client, so the
credentials and endpoint (AWS_* variables from the job's secretRef) work as they did
for the job. Exits 2 with one line naming the object when one cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune_operator.errors import EXIT_BAD_INPUT, UserError

from finetune_trainer.storage import fetch_to_cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune_trainer.serving.fetch")
    parser.add_argument("--into", required=True, type=Path, metavar="DIR")
    parser.add_argument("uris", nargs="+", metavar="URI")
    args = parser.parse_args(argv)
    try:
        for uri in args.uris:
            if not uri.startswith("s3://"):
                raise UserError(f"{uri}: only s3:// folders are fetched; claims are mounted")
            print(f"fetched {uri} to {fetch_to_cache(uri, args.into)}")
    except UserError as error:
        print(f"fetch: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
