"""Server: when `--base-url` is given, the OpenAI-compatible server that `niah run --backend openai`
will drive must answer, serve the model, and accept the longest requested context."""

from __future__ import annotations

from doctor.context import DoctorContext
from doctor.probes.server import SERVER, ServerFacts
from doctor.registry import Outcome, check
from doctor.report.model import Evidence, Fix
from run_plan.server_room import server_room_summary
from run_plan.shell import quote, shell_join

SECTION = "server"
_SCALING_DOC = "docs/scaling.md"
# Room a NIAH answer needs after the prompt (answers are a few tokens; greedy decoding stops early).
_ANSWER_TOKENS = 64


def _models_command(facts: ServerFacts) -> str:
    # The header stays in double quotes so the shell expands the variable; the key is never printed.
    # The URL came from the user: quoted, so pasting the line cannot run anything else.
    auth = f' -H "Authorization: Bearer ${facts.api_key_env}"' if facts.api_key_set else ""
    return f"curl -s{auth} {quote(facts.base_url + '/v1/models')}"


def _restart_command(model_id: str, context: int) -> str:
    return shell_join(("vllm", "serve", model_id, "--max-model-len", str(context + _ANSWER_TOKENS)))


def _served(ctx: DoctorContext) -> tuple[ServerFacts, list[Evidence]]:
    facts = ctx.needed(SERVER)
    return facts, [Evidence("server.base_url", facts.base_url, "--base-url")]


@check("server-reachable", title="OpenAI-compatible server answers", section=SECTION, needs=(SERVER,))
def server_reachable(ctx: DoctorContext) -> Outcome:
    facts, evidence = _served(ctx)
    evidence.append(Evidence("server.status", facts.status, "http", _models_command(facts)))
    evidence.append(
        Evidence("server.api_key_set", facts.api_key_set, "env", f'test -n "${facts.api_key_env}"')
    )
    if facts.status in (401, 403):
        return Outcome.fail(
            f"{facts.base_url} refused the request ({facts.error})",
            evidence,
            Fix(
                f"Export the server's key as {facts.api_key_env} (it is sent only in the "
                "Authorization header and never written anywhere)",
                (
                    f"read -rs {facts.api_key_env} && export {facts.api_key_env}  # type the key; it is not echoed",
                ),
            ),
        )
    if not facts.reachable:
        evidence.append(Evidence("server.error", facts.error, "http"))
        return Outcome.fail(
            f"cannot reach {facts.base_url}: {facts.error}",
            evidence,
            Fix(
                "Start the server, or correct --base-url (host, port, http vs https)",
                (
                    "vllm serve MODEL --port 8000   # or: niah serve --model demo --port 8000",
                    _models_command(facts),
                ),
                _SCALING_DOC,
            ),
        )
    if facts.status != 200 or facts.error:  # an error status, a refused redirect, or a 2xx of the wrong shape
        evidence.append(Evidence("server.error", facts.error, "http"))
        return Outcome.fail(
            f"{facts.base_url}/v1/models answered {facts.error}",
            evidence,
            Fix(
                "Point --base-url at the server root of an OpenAI-compatible API (vLLM, SGLang, niah serve)",
                (_models_command(facts),),
            ),
        )
    return Outcome.ok(
        f"{facts.base_url} answered in {facts.elapsed_ms} ms, {len(facts.models)} model(s)", evidence
    )


@check("server-model-listed", title="Server serves the requested model", section=SECTION, needs=(SERVER,))
def server_model_listed(ctx: DoctorContext) -> Outcome:
    facts, evidence = _served(ctx)
    if facts.status != 200 or facts.error:
        return Outcome.skip("the server did not answer usably (see server-reachable)", evidence)
    ids = [m.id for m in facts.models]
    evidence.append(Evidence("server.models", ids, "http", _models_command(facts)))
    wanted = ctx.target.model
    if not wanted:
        return Outcome.skip("no --model given: the name the server serves", evidence)
    if wanted in ids:
        return Outcome.ok(f"{wanted} is served", evidence)
    return Outcome.fail(
        f"{wanted} is not among the served models ({', '.join(ids) or 'none'})",
        evidence,
        Fix(
            "Pass --model exactly as the server names it, or start the server with that name",
            (
                shell_join(("vllm", "serve", wanted)),
                shell_join(("vllm", "serve", "PATH", "--served-model-name", wanted)),
            ),
        ),
    )


@check(
    "server-max-model-len",
    title="Server accepts the longest requested context",
    section=SECTION,
    needs=(SERVER,),
)
def server_max_model_len(ctx: DoctorContext) -> Outcome:
    facts, evidence = _served(ctx)
    model = next((m for m in facts.models if m.id == ctx.target.model), None)
    if facts.status != 200 or facts.error or model is None:
        return Outcome.skip("no served model to judge (see server-reachable / server-model-listed)", evidence)
    context = ctx.target.context
    evidence += [
        Evidence("server.max_model_len", model.max_model_len, "http", _models_command(facts)),
        Evidence("target.context", context, "--context"),
    ]
    if context is None:
        return Outcome.skip("no --context given", evidence)
    if model.max_model_len is None:
        return Outcome.warn(
            f"the server does not report max_model_len for {model.id}; cannot confirm {context:,} tokens fit",
            evidence,
            Fix("Confirm the server's maximum sequence length (vLLM: --max-model-len)"),
        )
    if model.max_model_len < context:
        return Outcome.fail(
            f"the server takes at most {model.max_model_len:,} tokens; the run needs {context:,}",
            evidence,
            Fix(
                "Restart the server with a larger maximum length (vLLM sizes its KV cache "
                "for it; at 1M+ tokens see the doc for TP, fp8 KV and the hybrid KV cache)",
                (_restart_command(model.id, context),),
                _SCALING_DOC,
            ),
        )
    headroom = model.max_model_len - context
    if headroom < ctx.target.max_new_tokens:
        # vLLM 0.32 shortens max_tokens to what is left (finish_reason "length"); with nothing left it
        # rejects the request (HTTP 400). Either way the answer is not measured, so `niah run` refuses it.
        return Outcome.fail(
            server_room_summary(model.max_model_len, context),
            evidence,
            Fix(
                "Give the server room for the answer, or run shorter lengths",
                (_restart_command(model.id, context),),
            ),
        )
    return Outcome.ok(f"max_model_len {model.max_model_len:,} ≥ {context:,} requested", evidence)
