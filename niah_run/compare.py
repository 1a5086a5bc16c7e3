"""`niah compare RUN_A RUN_B`: do two runs (e.g. local transformers and a server) agree?

Trials are matched by the SHA-256 of their exact input ids (`input_ids_sha256`), so only prompts
that were token for token the same are compared, whatever the backends, run folders or trial keys.
For each matched pair: are the outputs identical, and are the scores (strict `correct`) the same?

Greedy decoding is deterministic on one backend, but two backends (other kernels, batch shapes,
reduction orders, dtypes) can flip a near-tie token and continue differently. That noise changes
the text, rarely the retrieved value. So the verdict is:

- `identical`: every matched output is the same text;
- `greedy-noise`: some texts differ, but scores disagree on at most `tolerance` of the pairs
  (default 5 %) and the disagreements have no direction (exact McNemar test p ≥ 0.05);
- `divergent`: more score disagreements than that, or they lean one way (one backend is better):
  a real difference (template, tokenizer, dtype, quantization, sampling), not noise.

Exit code: 0 identical or greedy-noise, 1 divergent, 2 nothing to compare (no shared prompt).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from niah_run.results import RESULTS_FILE, latest_by_key, read_trial_rows
from niah_run.rows import TrialRow
from run_plan.errors import UsageError
from run_plan.safe_files import read_text_file
from run_plan.text import inert

DEFAULT_TOLERANCE = 0.05
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class PairDiff:
    input_ids_sha256: str
    context_tokens: int | None
    depth_percent: float | None
    control: bool
    correct_a: bool
    correct_b: bool
    output_a: str
    output_b: str
    common_prefix_chars: int


@dataclass
class Comparison:
    run_a: str
    run_b: str
    trials_a: int
    trials_b: int
    matched: int
    only_a: int
    only_b: int
    identical_outputs: int
    same_scores: int
    a_only_correct: int  # pairs where A is right and B wrong
    b_only_correct: int
    accuracy_a: float | None
    accuracy_b: float | None
    mcnemar_p: float
    tolerance: float
    verdict: str
    notes: list[str] = field(default_factory=list)
    differing: list[PairDiff] = field(default_factory=list)  # score disagreements first, then text-only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test on the discordant pairs (binomial, p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / (1 << n)
    return min(1.0, 2 * tail)


def _scored_rows(run_dir: Path) -> list[TrialRow]:
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise UsageError(
            f"{run_dir} has no {RESULTS_FILE}", hint="Give the --out folders of two `niah run`s."
        )
    rows = latest_by_key(read_trial_rows(path)).values()
    return [r for r in rows if r.status == "ok" and isinstance(r.input_ids_sha256, str)]


def _prompt_hash(row: TrialRow) -> str:
    return row.input_ids_sha256 or ""  # every scored row has one (_scored_rows)


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads(read_text_file(run_dir / "config.json"))
        return doc.get("config", {}) if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare_runs(run_a: Path, run_b: Path, *, tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    rows_a, rows_b = _scored_rows(run_a), _scored_rows(run_b)
    by_hash_a: dict[str, list[TrialRow]] = defaultdict(list)
    by_hash_b: dict[str, list[TrialRow]] = defaultdict(list)
    for row in rows_a:
        by_hash_a[_prompt_hash(row)].append(row)
    for row in rows_b:
        by_hash_b[_prompt_hash(row)].append(row)
    pairs: list[tuple[TrialRow, TrialRow]] = []
    for digest in sorted(set(by_hash_a) & set(by_hash_b)):
        pairs += list(
            zip(by_hash_a[digest], by_hash_b[digest])
        )  # the same prompt twice in a run pairs in order
    if not pairs:
        raise UsageError(
            f"no trial of {run_a} has the same prompt ids as a trial of {run_b}",
            hint="Compare runs of the same tokenizer, chat template, haystack, seed, needle kind and lengths "
            "(e.g. the same `niah run` flags with --backend transformers and --backend openai).",
        )
    matched_a = sum(1 for r in rows_a if _prompt_hash(r) in by_hash_b)
    matched_b = sum(1 for r in rows_b if _prompt_hash(r) in by_hash_a)
    identical = sum(1 for a, b in pairs if a.output_text == b.output_text)
    a_only = sum(1 for a, b in pairs if a.correct and not b.correct)
    b_only = sum(1 for a, b in pairs if b.correct and not a.correct)
    same_scores = len(pairs) - a_only - b_only
    p_value = mcnemar_exact_p(a_only, b_only)
    if identical == len(pairs):
        verdict = "identical"
    elif (a_only + b_only) <= tolerance * len(pairs) and p_value >= SIGNIFICANCE:
        verdict = "greedy-noise"
    else:
        verdict = "divergent"
    differing = [
        PairDiff(
            _prompt_hash(a),
            a.context_tokens,
            a.depth_percent,
            a.control,
            a.correct,
            b.correct,
            str(a.output_text),
            str(b.output_text),
            _common_prefix(str(a.output_text), str(b.output_text)),
        )
        for a, b in pairs
        if a.output_text != b.output_text
    ]
    differing.sort(key=lambda d: (d.correct_a == d.correct_b, d.context_tokens or 0, d.depth_percent or 0))
    notes = []
    config_a, config_b = _config(run_a), _config(run_b)
    for key in ("max_new_tokens", "dtype", "quant", "attn"):
        if key in config_a and key in config_b and config_a[key] != config_b[key]:
            notes.append(
                f"{key} differs: {config_a[key]!r} vs {config_b[key]!r} (outputs may differ for that reason)"
            )
    return Comparison(
        run_a=str(run_a),
        run_b=str(run_b),
        trials_a=len(rows_a),
        trials_b=len(rows_b),
        matched=len(pairs),
        only_a=len(rows_a) - matched_a,
        only_b=len(rows_b) - matched_b,
        identical_outputs=identical,
        same_scores=same_scores,
        a_only_correct=a_only,
        b_only_correct=b_only,
        accuracy_a=sum(1 for a, _ in pairs if a.correct) / len(pairs),
        accuracy_b=sum(1 for _, b in pairs if b.correct) / len(pairs),
        mcnemar_p=round(p_value, 6),
        tolerance=tolerance,
        verdict=verdict,
        notes=notes,
        differing=differing,
    )


def _clip(text: str, width: int = 70) -> str:
    # model text goes to a terminal: show newlines, escape every other control character (no ANSI codes)
    text = "".join(
        "⏎" if ch == "\n" else f"\\x{ord(ch):02x}" if ord(ch) < 32 or ord(ch) == 127 else ch for ch in text
    )
    return text if len(text) <= width else text[: width - 1] + "…"


def render_text(result: Comparison, *, show: int = 10) -> str:
    n = result.matched
    lines = [
        f"niah compare: {result.run_a}  vs  {result.run_b}",
        (
            f"matched by prompt hash: {n} trials (A has {result.trials_a} scored, {result.only_a} unmatched; "
            f"B has {result.trials_b} scored, {result.only_b} unmatched)"
        ),
        f"identical outputs: {result.identical_outputs}/{n} ({100 * result.identical_outputs / n:.0f}%)",
        (
            f"same strict score: {result.same_scores}/{n} ({100 * result.same_scores / n:.0f}%); "
            f"A right and B wrong: {result.a_only_correct}, B right and A wrong: {result.b_only_correct} "
            f"(exact McNemar p = {result.mcnemar_p:.3g})"
        ),
        (
            f"accuracy on the matched trials: A {100 * (result.accuracy_a or 0):.1f}%, "
            f"B {100 * (result.accuracy_b or 0):.1f}%"
        ),
    ]
    verdicts = {
        "identical": "IDENTICAL: every matched trial produced the same text.",
        "greedy-noise": (
            f"AGREE (greedy noise): texts differ on {n - result.identical_outputs} trial(s), scores "
            f"disagree on at most {100 * result.tolerance:g}% with no direction."
        ),
        "divergent": (
            f"DIVERGENT: scores disagree on {result.a_only_correct + result.b_only_correct} of {n} trials "
            f"(tolerance {100 * result.tolerance:g}%)"
            + (", leaning one way" if result.mcnemar_p < SIGNIFICANCE else "")
            + ". Check the tokenizer, chat template, dtype/quantization and sampling settings of both."
        ),
    }
    lines.append(verdicts[result.verdict])
    lines += [f"note: {note}" for note in result.notes]
    for diff in result.differing[:show]:
        where = "control" if diff.control else f"depth {diff.depth_percent:g}%"
        marks = f"A {'✓' if diff.correct_a else '✗'} B {'✓' if diff.correct_b else '✗'}"
        lines += [
            (
                f"- {diff.context_tokens} tok, {where}, {marks}, same for {diff.common_prefix_chars} chars "
                f"[{diff.input_ids_sha256[:12]}]"
            ),
            f"    A: {_clip(diff.output_a)}",
            f"    B: {_clip(diff.output_b)}",
        ]
    if len(result.differing) > show:
        lines.append(f"… {len(result.differing) - show} more differing trial(s) (--format json lists all)")
    return inert("\n".join(lines)) + "\n"  # names and errors from outside: inert


def exit_code(result: Comparison) -> int:
    return 1 if result.verdict == "divergent" else 0
