"""What a CPU run no longer pays for at start-up: a DeepSpeed op compiled on first use, and
Presidio and spaCy imported by a job that does not redact. Each runs in a fresh interpreter,
since both are decided once per process (DeepSpeed's comms, Python's module cache)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.factories import MakeJob

BUILD_ENGINE = """
import json, os, sys
import torch.distributed as dist
from finetune_operator import api
from finetune_trainer.deepspeed_config import build_deepspeed_config
from finetune_trainer.engine import build_engine

dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[3], rank=0, world_size=1)
spec = api.FineTuneJobSpec.model_validate(json.loads(sys.argv[1]))
config = build_deepspeed_config(spec, world_size=1, precision="fp32")
build_engine(spec, 2, __import__("pathlib").Path(sys.argv[2]), config, "fp32")
import deepspeed.comm.comm as comm
print(json.dumps({"shm_op": comm.cdb.shm_comm_op is not None}))
"""

PREPARE = """
import json, sys
from pathlib import Path
from finetune_operator import api
from finetune_trainer.data import prepare_records

spec = api.FineTuneJobSpec.model_validate(json.loads(sys.argv[1]))
prepared = prepare_records(spec, base_dir=Path(sys.argv[2]))
loaded = sorted({name.split(".")[0] for name in sys.modules} & {"presidio_analyzer", "spacy"})
print(json.dumps({"train": len(prepared.train), "loaded": loaded}))
"""


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def free_port() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def test_a_cpu_engine_compiles_no_deepspeed_op(workspace: Path, tmp_path: Path) -> None:
    # DeepSpeed would build its shared-memory all-reduce (inference only) into this folder:
    # 30-80 s of gcc on a fresh install's first run.
    import os

    extensions = tmp_path / "torch_extensions"
    env = os.environ | {
        "TORCH_EXTENSIONS_DIR": str(extensions),
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": free_port(),
    }  # fmt: skip
    spec = MakeJob.trainer().spec(hyperparameters={"batchSize": 4, "microBatchSize": 2}).obj()
    result = run_python(
        BUILD_ENGINE, json.dumps(spec["spec"]), str(workspace / "model"), free_port(), env=env
    )
    assert result == {"shm_op": False}
    assert not extensions.exists() or not any(extensions.rglob("*.so"))


def test_a_job_without_redaction_loads_no_ner_stack(workspace: Path) -> None:
    spec = MakeJob.trainer().obj()["spec"]
    assert spec["dataset"]["cleaning"]["redactPII"] is False
    result = run_python(PREPARE, json.dumps(spec), str(workspace))
    assert result["train"] and result["loaded"] == []


def test_a_redacting_job_still_loads_it(workspace: Path) -> None:
    spec = MakeJob.trainer().spec(dataset={"cleaning": {"redactPII": True}}).obj()["spec"]
    result = run_python(PREPARE, json.dumps(spec), str(workspace))
    assert "presidio_analyzer" in result["loaded"]  # type: ignore[operator]
