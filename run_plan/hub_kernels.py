"""Whether `niah run` lets transformers replace layers with kernels from the Hugging Face hub at load.

transformers 5.25 loads with `use_kernels` on by default (unless the environment variable
`USE_HUB_KERNELS` turns it off) and, on CUDA, `kernelize`s the model: RMSNorm, rotary embeddings,
activations and recurrent-layer functions are swapped for `kernels-community/*` repositories, fetched
from the hub at load. Offline (niah's default) a kernel that is not in the local cache stops the load
("Version 2 of 'kernels-community/rotary' is not available in the local cache and Hugging Face Hub is in
offline mode"), and a kernel that is there changes the numerics and the memory of the run away from the
code the doctor traced.

So `niah run` loads with `use_kernels=False` wherever from_pretrained has that switch, unless the user
asked for hub kernels with `USE_HUB_KERNELS` set to a true value. The doctor asks transformers, with the
same keyword arguments, what the load will do (doctor.probes.config_load); both sides call this module.
Light: no torch, no transformers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

ENV = "USE_HUB_KERNELS"
# transformers' own reading of the variable (utils.import_utils.ENV_VARS_TRUE_VALUES)
_TRUE = {"1", "ON", "YES", "TRUE"}


def opted_in(environ: Mapping[str, str] | None = None) -> bool:
    """The user asked for transformers' hub kernels: USE_HUB_KERNELS is set to a true value."""
    value = (os.environ if environ is None else environ).get(ENV)
    return value is not None and value.strip().upper() in _TRUE


def load_kwargs(has_switch: bool, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What `niah run` adds to from_pretrained: `use_kernels=False` where the installed transformers has
    the switch (`PreTrainedModel.set_use_kernels`) and the user did not opt in; nothing otherwise."""
    return {"use_kernels": False} if has_switch and not opted_in(environ) else {}


def describe(kwargs: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> str | None:
    """The load's hub-kernel setting as the run records it (plan and run identity); None when the
    installed transformers has no such switch (nothing to record)."""
    if kwargs.get("use_kernels") is False:
        return "off (use_kernels=False: nothing fetched from the hub at load)"
    if opted_in(environ):
        return f"transformers default ({ENV}={(os.environ if environ is None else environ).get(ENV)})"
    return None
