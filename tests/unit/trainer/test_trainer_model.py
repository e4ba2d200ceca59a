"""Finding the base model, all-linear, and what LoRA adapts."""

from __future__ import annotations

import pytest
from finetune_operator import api
from finetune_trainer.errors import ModelSourceError
from finetune_trainer.model import (
    apply_method,
    count_parameters,
    linear_module_names,
    load_base_model,
    resolve_model_dir,
    resolve_target_modules,
)


@pytest.fixture(scope="module")
def base(workspace):
    import torch

    return load_base_model(
        workspace / "model", api.ModelSpec(source="model"), dtype=torch.float32, quantize_4bit=False
    )


def test_all_linear_is_every_linear_layer_but_the_output_head(base):
    names = resolve_target_modules(base, ["all-linear"])
    assert names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert "lm_head" not in names
    assert names == linear_module_names(base)


def test_named_target_modules_pass_through(base):
    assert resolve_target_modules(base, ["q_proj", "v_proj"]) == ["q_proj", "v_proj"]


def test_unknown_target_module_is_named_with_the_choices(base):
    with pytest.raises(ModelSourceError, match=r"targetModules: c_attn not found.*q_proj"):
        resolve_target_modules(base, ["q_proj", "c_attn"])


def test_lora_trains_only_adapters_and_full_trains_everything(workspace):
    import torch

    def fresh():
        return load_base_model(
            workspace / "model", api.ModelSpec(source="model"), dtype=torch.float32,
            quantize_4bit=False,
        )  # fmt: skip

    lora = apply_method(fresh(), api.MethodSpec(type="lora"), gradient_checkpointing=True)
    trainable, total = count_parameters(lora)
    assert 0 < trainable < total
    assert all("lora_" in n for n, p in lora.named_parameters() if p.requires_grad)
    full = apply_method(fresh(), api.MethodSpec(type="full"), gradient_checkpointing=False)
    trainable, total = count_parameters(full)
    assert trainable == total


def test_relative_model_path_resolves_against_the_job_folder(workspace):
    found = resolve_model_dir(api.ModelSpec(source="model"), base_dir=workspace)
    assert found == workspace / "model"


def test_pvc_model_resolves_under_the_pvc_root(workspace, monkeypatch):
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(workspace.parent))
    found = resolve_model_dir(api.ModelSpec(source=f"pvc://{workspace.name}/model"))
    assert found.resolve() == (workspace / "model").resolve()


def test_a_folder_without_config_json_is_not_a_model(tmp_path):
    with pytest.raises(ModelSourceError, match=r"spec\.model\.source: .*no config\.json"):
        resolve_model_dir(api.ModelSpec(source=str(tmp_path)))


def test_hub_model_offline_and_not_cached_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    spec = api.ModelSpec(source="hf://example-org/missing-model", revision="v1")
    with pytest.raises(ModelSourceError, match=r"hf://example-org/missing-model@v1 is not in"):
        resolve_model_dir(spec)


def test_hub_model_from_the_local_cache_loads_offline(monkeypatch, workspace, tmp_path):
    """A model already in the HF cache (as snapshot_download lays it out) is found offline."""
    import huggingface_hub.constants

    repo = tmp_path / "models--example-org--tiny"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    for file in (workspace / "model").iterdir():
        (snapshot / file.name).symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    found = resolve_model_dir(api.ModelSpec(source="hf://example-org/tiny"))
    assert (found / "config.json").is_file()


def test_a_malformed_tokenizer_is_a_model_source_error(workspace, tmp_path):
    from finetune_trainer.model import load_tokenizer

    for file in (workspace / "model").iterdir():
        (tmp_path / file.name).symlink_to(file)
    (tmp_path / "tokenizer.json").unlink()
    (tmp_path / "tokenizer.json").write_text("{not json")
    spec = api.ModelSpec(source="broken-model")
    with pytest.raises(ModelSourceError, match=r"spec\.model\.source: .*tokenizer of broken-model"):
        load_tokenizer(tmp_path, spec)


def test_the_tokenizer_gets_the_jobs_chat_template_and_a_pad_token(workspace):
    from finetune_trainer.model import load_tokenizer

    tokenizer = load_tokenizer(workspace / "model", api.ModelSpec(source="model"), "{{ 'x' }}")
    assert tokenizer.chat_template == "{{ 'x' }}" and tokenizer.pad_token_id is not None
