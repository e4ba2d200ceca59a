"""The sweep's search space in Tune's terms, and a trial's values applied to the job's spec.

Pure: no Ray Tune objects are built until `tune_space`, and `apply_trial` only re-validates
the spec, so a value out of a field's range fails with the field's own message.
"""

from __future__ import annotations

import copy
from typing import Any

from finetune_operator import api


def tune_space(sweep: api.SweepSpec) -> dict[str, Any]:
    """{searchSpace name: Tune domain}; Optuna reads these through OptunaSearch."""
    from ray import tune

    space: dict[str, Any] = {}
    for name, domain in sweep.search_space.items():
        if domain.choice is not None:
            space[name] = tune.choice(list(domain.choice))
        elif domain.log_uniform is not None:
            space[name] = tune.loguniform(*domain.log_uniform)
        else:
            assert domain.uniform is not None  # the model allows exactly one of the three
            space[name] = tune.uniform(*domain.uniform)
    return space


def apply_trial(spec: api.FineTuneJobSpec, config: dict[str, Any]) -> api.FineTuneJobSpec:
    """The spec one trial trains with: the sweep's values written over the job's own."""
    wire = copy.deepcopy(spec.to_wire())
    for name, value in config.items():
        *parents, leaf = api.SWEEP_PARAMETERS[name]
        node = wire
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return api.FineTuneJobSpec.model_validate(wire)
