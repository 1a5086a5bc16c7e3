"""What the model class will do when `niah run` loads it: refuse the attention implementation, or fetch
kernels from the hub. Asked of the installed transformers in the config-load child
(doctor/probes/model_class.py); both are runs that fail at load while everything else looks fine.

- `attn-model-support`: transformers refuses some implementations per class (GPT-OSS and, from 5.25 on,
  Gemma 2 refuse sdpa; pure Mamba models refuse every attention implementation but eager) with a
  ValueError before any weight loads. FAIL with transformers' own message and the implementations the
  class accepts; the memory estimate of a refused implementation would be of a run that never happens.
- `hub-kernels-offline`: transformers 5.25 kernelizes models by default on CUDA and fetches
  `kernels-community/*` repositories at load; offline without them in the cache, from_pretrained fails.
  `niah run` loads with `use_kernels=False` (run_plan.hub_kernels) unless USE_HUB_KERNELS asks for them;
  this check asks from_pretrained what it will do with the arguments niah passes, and FAILs on a GPU
  machine when it would fetch a kernel that is not cached while the run is offline.
"""

from __future__ import annotations

from doctor.context import DoctorContext
from doctor.probes import Unavailable
from doctor.probes.config_load import CONFIG_LOAD, ConfigLoadFacts, HubKernelRepo, ModelClassFacts
from doctor.probes.nvml import NVML
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix
from run_plan import hub_kernels
from run_plan.spec import AUTO_ATTN

SECTION = "model"
# What to suggest instead of a refused implementation, in order: fused and exact first, then the
# one every class accepts (it materialises the scores), then flex (compiled with Triton).
_PREFERENCE = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")


def _class_facts(ctx: DoctorContext) -> tuple[ConfigLoadFacts, ModelClassFacts] | Outcome:
    facts = ctx.needed(CONFIG_LOAD)
    if facts.model_class is None:
        return Outcome.skip("the config did not load in transformers (see model-config-loads)")
    if facts.model_class.class_error:
        return Outcome.skip(f"the model class could not be resolved: {facts.model_class.class_error}")
    return facts, facts.model_class


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text else ""


def accepted(model: ModelClassFacts) -> list[str]:
    """The implementations the class accepts, in the order the doctor would suggest them."""
    names = [n for n in _PREFERENCE if n in model.refusals and model.refusals[n] is None]
    return names + sorted(n for n, why in model.refusals.items() if why is None and n not in names)


@check(
    "attn-model-support",
    title="The model class accepts the attention implementation",
    section=SECTION,
    needs=(CONFIG_LOAD,),
)
def attn_model_support(ctx: DoctorContext) -> Outcome:
    found = _class_facts(ctx)
    if isinstance(found, Outcome):
        return found
    facts, model = found
    attn = AUTO_ATTN if ctx.target.attn == "auto" else ctx.target.attn
    source = f"transformers {facts.transformers_version} (child)"
    evidence = [
        Evidence("model.class", model.model_class, source),
        Evidence("attn_implementation", attn, "plan"),
        Evidence(
            "model.attention_accepted",
            accepted(model),
            f"{model.model_class}._check_and_adjust_attn_implementation",
        ),
    ]
    if model.attention_error:
        return Outcome.skip(model.attention_error, evidence)
    if attn not in model.refusals:
        return Outcome.skip(
            f"{attn} was not asked of {model.model_class} (a hub kernel: asking would fetch it)", evidence
        )
    refusal = model.refusals[attn]
    if refusal is None:
        settled = model.settled.get(attn, attn)
        how = f" (transformers settles on {settled})" if settled != attn else ""
        return Outcome.ok(f"{model.model_class} accepts {attn}{how}", evidence)
    evidence.append(Evidence("model.attention_refusal", refusal, source))
    others = accepted(model)
    from doctor.plan import rerun_command

    commands = tuple(rerun_command(ctx.target, attn=name) for name in others[:2])
    instead = (
        f": {others[0]}" + (f" (or {', '.join(others[1:])})" if len(others) > 1 else "") if others else ""
    )
    return Outcome.fail(
        f"transformers {facts.transformers_version} refuses attn_implementation={attn!r} for {model.model_class}: "
        f"{_first_line(refusal)} — from_pretrained stops before loading any weights",
        evidence,
        Fix(f"Use an implementation {model.model_class} accepts{instead}", commands),
    )


def _repo_label(repo: HubKernelRepo) -> str:
    at = f"v{repo.version}" if repo.version is not None else (repo.revision or "?")[:12]
    return f"{repo.repo_id} ({at})"


def _download(repo: HubKernelRepo) -> tuple[str, ...]:
    revision = f"v{repo.version}" if repo.version is not None else (repo.revision or "main")
    return ("hf", "download", repo.repo_id, "--repo-type", "kernel", "--revision", revision)


@check(
    "hub-kernels-offline",
    title="The load fetches nothing from the hub that is not cached",
    section=SECTION,
    needs=(CONFIG_LOAD, NVML),
)
def hub_kernels_offline(ctx: DoctorContext) -> Outcome:
    found = _class_facts(ctx)
    if isinstance(found, Outcome):
        return found
    facts, model = found
    kernels = model.hub_kernels
    if kernels is None:
        return Outcome.skip("the child did not ask what the load fetches")
    source = f"transformers {facts.transformers_version} from_pretrained (child)"
    evidence = [
        Evidence("load.kwargs_added_by_niah", kernels.load_kwargs, "run_plan.hub_kernels"),
        Evidence(f"env.{hub_kernels.ENV}", hub_kernels.opted_in() or None, "env"),
        Evidence("load.kernelize", kernels.kernelize, source),
    ]
    if kernels.error:
        return Outcome.warn(f"could not tell what the load fetches from the hub: {kernels.error}", evidence)
    if not kernels.kernelize:
        why = (
            "niah loads with use_kernels=False"
            if kernels.load_kwargs.get("use_kernels") is False
            else f"transformers {facts.transformers_version} does not kernelize at load"
        )
        return Outcome.ok(f"{why}: no kernel is fetched from the hub at load", evidence)
    evidence.append(Evidence("load.kernel_layers", list(kernels.layers), source))
    evidence += [
        Evidence(f"hub.{r.repo_id}", r.missing or "in the local cache", "kernels (offline)")
        for r in kernels.repos
    ]
    missing = [r for r in kernels.repos if r.missing]
    if not missing:
        names = ", ".join(_repo_label(r) for r in kernels.repos) or "no kernel for this model on CUDA"
        return Outcome.ok(
            f"transformers kernelizes the model at load: {names}, all in the local cache", evidence
        )
    nvml = ctx.probe(NVML)
    gpu_here = not isinstance(nvml, Unavailable) and nvml.gpu_count > 0
    names = ", ".join(_repo_label(r) for r in missing)
    fix = Fix(
        f"Leave transformers' hub kernels off (unset {hub_kernels.ENV}: niah then loads with use_kernels=False), "
        "or download them while online",
        (f"unset {hub_kernels.ENV}", *(_download(r) for r in missing)),
        "https://huggingface.co/docs/transformers/main/en/kernel_doc/overview",
    )
    if ctx.target.online:
        return Outcome.warn(
            f"transformers will download {names} from the hub at load (--online), and the run uses their "
            "kernels instead of the code the doctor traced",
            evidence,
            fix,
        )
    why = (
        f"{hub_kernels.ENV} asks for it"
        if hub_kernels.opted_in()
        else "by default, with no switch to turn it off"
    )
    summary = (
        f"transformers {facts.transformers_version} kernelizes the model at load ({why}) and needs {names}, "
        f"not in the local cache; offline, from_pretrained fails: {_first_line(missing[0].missing)}"
    )
    if not gpu_here:  # kernelize picks CUDA kernels only for a model on a GPU: not on this machine
        return Outcome.warn(summary + " (on the GPU machine that runs it)", evidence, fix)
    return Outcome.fail(summary, evidence, fix)
