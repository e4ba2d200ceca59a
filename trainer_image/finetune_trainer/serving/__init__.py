"""The hand-off to serving: vLLM and KServe manifests for a finished output.

`served_model` says what an output holds (LoRA adapter, merged or full model) and where;
`vllm` and `kserve` are pure builders of the manifests; `publish` writes them into the
output's `serving/` folder; `command` is `finetune serve-manifest`; `fetch` is what the
vLLM pod's init container runs to bring s3:// files in. Nothing here imports torch.
"""
