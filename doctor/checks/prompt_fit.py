"""Does every planned length hold its prompt? Template, intro, needles and question take tokens of their own.

`niah run` refuses a length that leaves no room for the haystack when it builds the first prompt, which is
after the model has loaded. The prompt-frame probe counts the same frames with the run's tokenizer and
the sweep's own code (run_plan.prompt_frame), so the refusal comes here, before anything loads, with the
shortest length that works.
"""

from __future__ import annotations

from doctor.context import DoctorContext
from doctor.plan import rerun_command
from doctor.probes.prompt_frame import PROMPT_FRAME
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix
from run_plan.prompt_frame import MIN_HAYSTACK_TOKENS

SECTION = "model"


@check(
    "lengths-hold-prompt",
    title="Every planned length holds the prompt's template, needles and question",
    section=SECTION,
    needs=(PROMPT_FRAME,),
)
def lengths_hold_prompt(ctx: DoctorContext) -> Outcome:
    facts = ctx.needed(PROMPT_FRAME)
    spec = ctx.target
    evidence = [
        Evidence("tokenizer", facts.tokenizer_from, "AutoTokenizer.from_pretrained, as the run loads it"),
        Evidence("needle_kind", spec.needle_kind, "plan"),
    ]
    if facts.template_error:
        return Outcome.fail(
            f"the prompt cannot be built at any length: {facts.template_error}",
            evidence,
            Fix(
                "Use a model whose chat template wraps the user message as it is (niah run refuses this one)"
            ),
        )
    evidence.append(
        Evidence(
            "template",
            f"{facts.template_mode}: {facts.template_tokens} tokens around the message",
            "tokenizer",
        )
    )
    evidence += [
        Evidence(
            f"frame_tokens[{fit.length}]", fit.frame_tokens, "run_plan.prompt_frame: the most of its trials"
        )
        for fit in facts.lengths
    ]
    short = [fit for fit in facts.lengths if not fit.fits]
    if not short:
        least = min(fit.length - fit.frame_tokens for fit in facts.lengths)
        return Outcome.ok(
            f"every planned length holds its prompt (the shortest leaves {least:,} tokens of haystack)",
            evidence,
        )
    named = ", ".join(f"{fit.length:,}" for fit in short)
    frames = ", ".join(f"{fit.frame_tokens:,}" for fit in short)
    cause = (
        f"the chat template, intro, needle(s) and question take {frames} tokens there and the haystack needs "
        f"at least {MIN_HAYSTACK_TOKENS}; niah run would refuse it only once the model has loaded"
    )
    if facts.shortest is None:
        longest = max(fit.frame_tokens for fit in facts.lengths)
        return Outcome.fail(
            f"length(s) {named} too short for the prompt: {cause}",
            evidence,
            Fix(f"Plan lengths above {longest:,} tokens"),
        )
    evidence.append(
        Evidence("shortest_length", facts.shortest, "run_plan.prompt_frame: its every trial fits")
    )
    lengths = sorted({facts.shortest if not fit.fits else fit.length for fit in facts.lengths})
    context = max(spec.context or 0, *lengths)
    command = rerun_command(
        spec, context=context, lengths=",".join(map(str, lengths)) if lengths != [context] else None
    )
    return Outcome.fail(
        f"length(s) {named} too short for the prompt (the shortest that works is {facts.shortest:,}): {cause}",
        evidence,
        Fix(f"Plan lengths of at least {facts.shortest:,} tokens", (command,)),
    )
