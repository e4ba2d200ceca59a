# The operator image: kopf, pydantic and the validators only (no torch, ray or deepspeed).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer_image/finetune_trainer ./trainer_image/finetune_trainer
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# A non-root user with a fixed uid, so restricted PodSecurity admits the pod.
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["finetune-operator"]
