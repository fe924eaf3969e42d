"""Task evaluators (work in progress for issue 8): tool calling first; exact match and the
lm-eval bridge follow.

``toolcalls`` generates greedily with the variant for each case (the chat template when
the tokenizer has one), scores JSON validity, the tool chosen, exact arguments and
arguments valid against the tool's JSON Schema, and names the cases the base passes and
the variant fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

from quantforge import (
    Artifact,
    EvalContext,
    Evaluator,
    Measurement,
    Option,
    OptionSet,
    Runtime,
    hookimpl,
)
from quantforge.options import OptionValue

BUILTIN_CASES = Path(__file__).parent / "data" / "toolcalls.jsonl"
SCORES_FILE = "toolcall-scores.json"


class ToolCalling(Evaluator):
    name = "toolcalls"
    description = (
        "tool calling: valid JSON, the right tool, exact arguments, schema-valid arguments"
    )
    requires = ("transformers", "jsonschema")
    extra = "tasks"
    needs_reference = True
    order = 60
    options = OptionSet(
        [
            Option("cases", str, "", "JSONL file of cases (default: the built-in 50)"),
            Option("max_new_tokens", int, 64, "tokens per answer at most", min=1, max=4096),
            Option("limit", int, 0, "cases used at most (0: all)", min=0),
            Option("on_bad_lines", str, "refuse", "refuse or skip malformed JSONL lines"),
        ]
    )

    def _scores(
        self, runtime: Runtime, options: Mapping[str, OptionValue], context: EvalContext
    ) -> list[dict[str, object]]:
        from dataclasses import asdict

        from transformers import AutoTokenizer

        from quantforge_tasks.generate import answer
        from quantforge_tasks.toolcall import extract_call, load_cases, score

        if context.base_model is None:
            raise ValueError("toolcalls needs the base model's tokenizer (an older host?)")
        tokenizer = AutoTokenizer.from_pretrained(context.base_model)
        path = Path(str(options["cases"])) if options["cases"] else BUILTIN_CASES
        cases = load_cases(path, str(options["on_bad_lines"])).cases
        if int(options["limit"]):
            cases = cases[: int(options["limit"])]
        names = ", ".join(sorted({t["name"] for c in cases for t in c.tools}))
        out = []
        for case in cases:
            prompt = f"Tools: {names}\nRequest: {case.request}\nCall: "
            text, stopped = answer(
                runtime,
                tokenizer,
                prompt,
                int(options["max_new_tokens"]),
                lambda t: extract_call(t) is not None,
            )
            out.append(asdict(score(case, text, stopped)))
        return out

    def prepare_reference(
        self,
        runtime: Runtime,
        options: Mapping[str, OptionValue],
        context: EvalContext,
        out_dir: Path,
    ) -> None:
        scores = self._scores(runtime, options, context)
        (out_dir / SCORES_FILE).write_text(json.dumps(scores), encoding="utf-8")

    def evaluate(
        self,
        artifact: Artifact,
        runtime: Runtime | None,
        options: Mapping[str, OptionValue],
        context: EvalContext,
    ) -> list[Measurement]:
        from quantforge_tasks.toolcall import CaseScore, newly_failed, summarize

        assert runtime is not None
        rows = self._scores(runtime, options, context)
        scores = [CaseScore(**r) for r in rows]  # type: ignore[arg-type]
        base: list[CaseScore] = []
        if context.reference_dir and (context.reference_dir / SCORES_FILE).is_file():
            ref = json.loads((context.reference_dir / SCORES_FILE).read_text(encoding="utf-8"))
            base = [CaseScore(**r) for r in ref]
        lost = newly_failed(base, scores) if base else []
        out = []
        for metric, (passed, total) in summarize(scores).items():
            details = {"passed": passed, "total": total, "newly_failed_lines": lost}
            out.append(Measurement(metric, passed / total, "", "higher", details))
        return out


@hookimpl
def register_evaluators(register: Callable[[Evaluator], None]) -> None:
    register(ToolCalling())
