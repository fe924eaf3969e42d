"""First-party evaluators of task behaviour, which perplexity does not show.

- ``toolcalls``: generate a tool call per case (greedy; the chat template with the tools
  when the tokenizer has one), scored on valid JSON, the right tool, exact arguments and
  arguments valid against the tool's JSON Schema.
- ``exact-match``: short answers (arithmetic, word problems) read with a regular expression
  and compared with the expected answer.
- ``lmeval``: tasks of lm-evaluation-harness, run through the runtime that runs the variant.

Each generative task reports rates with their counts (``passed``/``total`` in the details,
shown as "47/50") and the case lines the base passes and the variant fails. Case files
are JSONL; malformed lines are named by number and refused, or skipped with
``on_bad_lines=skip``. A case whose answer runs into the token cap fails.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

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

from quantforge_tasks.cases import BAD_LINES, CaseResult

DATA = Path(__file__).parent / "data"


def _common_options(default_tokens: int) -> list[Option]:
    return [
        Option("cases", str, "", "JSONL file of cases (default: the built-in set)"),
        Option("max_new_tokens", int, default_tokens, "tokens per answer at most", min=1, max=4096),
        Option("limit", int, 0, "use the first N cases only (0: all)", min=0),
        Option("on_bad_lines", str, "refuse", "malformed JSONL lines", choices=list(BAD_LINES)),
    ]


class GenerativeTask(Evaluator):
    """A task answered by greedy generation, case by case, compared with the base's answers.

    Subclasses read their cases and answer one case; this class runs them, keeps the
    base's answers as the reference and turns checks into rates with counts."""

    needs_reference = True
    by_default = False
    requires: ClassVar[tuple[str, ...]] = ("transformers", "jsonschema")
    extra = "tasks"
    order = 60
    builtin: ClassVar[Path]
    results_file: ClassVar[str]

    @abstractmethod
    def load(self, path: Path, options: Mapping[str, OptionValue]) -> tuple[list[Any], list[str]]:
        """The cases in ``path`` and the problems of the lines skipped; raise
        :class:`~quantforge.errors.UsageError` on bad input."""

    @abstractmethod
    def answer(
        self, runtime: Runtime, tokenizer: Any, case: Any, options: Mapping[str, OptionValue]
    ) -> CaseResult:
        """Generate the variant's answer to one case and check it."""

    def cases_path(self, options: Mapping[str, OptionValue]) -> Path:
        return Path(str(options["cases"])).expanduser() if options["cases"] else self.builtin

    def check_inputs(self, options: Mapping[str, OptionValue]) -> str:
        from quantforge_tasks.cases import fingerprint

        path = self.cases_path(options)
        self.load(path, options)
        return fingerprint(path)

    def _run(
        self, runtime: Runtime, options: Mapping[str, OptionValue], context: EvalContext
    ) -> tuple[list[CaseResult], list[str]]:
        from quantforge_tasks.generate import base_tokenizer

        tokenizer = base_tokenizer(context, self.name)
        cases, problems = self.load(self.cases_path(options), options)
        if int(options["limit"]):
            cases = cases[: int(options["limit"])]
        results = []
        for case in cases:
            context.pause()  # between examples: see EvalContext.pause
            results.append(self.answer(runtime, tokenizer, case, options))
        return results, problems

    def prepare_reference(
        self,
        runtime: Runtime,
        options: Mapping[str, OptionValue],
        context: EvalContext,
        out_dir: Path,
    ) -> None:
        results, _ = self._run(runtime, options, context)
        rows = [r.as_dict() for r in results]
        (out_dir / self.results_file).write_text(json.dumps(rows), encoding="utf-8")

    def evaluate(
        self,
        artifact: Artifact,
        runtime: Runtime | None,
        options: Mapping[str, OptionValue],
        context: EvalContext,
    ) -> list[Measurement]:
        from quantforge_tasks.cases import fingerprint, newly_failed, summarize

        assert runtime is not None
        results, problems = self._run(runtime, options, context)
        base: list[CaseResult] = []
        reference = context.reference_dir / self.results_file if context.reference_dir else None
        if reference is not None and reference.is_file():
            rows = json.loads(reference.read_text(encoding="utf-8"))
            base = [CaseResult.from_dict(r) for r in rows]
        path = self.cases_path(options)
        common = {
            "cases": "built-in" if path == self.builtin else str(path),
            "cases_sha256": fingerprint(path),
            "cut_off": sum(not r.stopped for r in results),
            "skipped_lines": problems,
            "max_new_tokens": int(options["max_new_tokens"]),
        }
        out = []
        for check, (passed, total) in summarize(results).items():
            details: dict[str, Any] = {"passed": passed, "total": total, **common}
            if base:
                details["base_passed"] = sum(r.checks.get(check, False) for r in base)
                details["newly_failed_lines"] = newly_failed(base, results, check)
            out.append(Measurement(check, passed / total, "", "higher", details))
        return out


class ToolCalling(GenerativeTask):
    name = "toolcalls"
    description = "tool calling: valid JSON, right tool, exact and schema-valid arguments"
    builtin = DATA / "toolcalls.jsonl"
    results_file = "toolcall-answers.json"
    options = OptionSet(_common_options(64))

    def load(self, path: Path, options: Mapping[str, OptionValue]) -> tuple[list[Any], list[str]]:
        from quantforge_tasks.toolcall import load_cases

        return load_cases(path, str(options["on_bad_lines"]))

    def answer(
        self, runtime: Runtime, tokenizer: Any, case: Any, options: Mapping[str, OptionValue]
    ) -> CaseResult:
        from quantforge_tasks.generate import greedy
        from quantforge_tasks.toolcall import extract_call, prompt_ids, score

        ids = prompt_ids(tokenizer, case)
        text, stopped = greedy(
            runtime,
            tokenizer,
            ids,
            int(options["max_new_tokens"]),
            lambda t: extract_call(t) is not None,
        )
        return score(case, text, stopped)


class ExactMatch(GenerativeTask):
    name = "exact-match"
    description = "short answers (arithmetic, word problems) read by a regex, matched exactly"
    requires = ("transformers",)
    builtin = DATA / "arithmetic.jsonl"
    results_file = "exact-match-answers.json"
    options = OptionSet(
        [
            *_common_options(32),
            Option(
                "prompt",
                str,
                "Question: {question}\nAnswer with a number only.\nAnswer:",
                "prompt template with a {question} field",
            ),
            Option(
                "answer_regex",
                str,
                r"-?\d[\d,]*(?:\.\d+)?",
                "reads the answer: its group, or the whole first match",
            ),
            Option("stop", str, "\n", "an answer ends at this text (after its first word)"),
        ]
    )

    def load(self, path: Path, options: Mapping[str, OptionValue]) -> tuple[list[Any], list[str]]:
        from quantforge_tasks.exact_match import check_prompt, compile_regex, load_cases

        check_prompt(str(options["prompt"]))
        compile_regex(str(options["answer_regex"]))
        return load_cases(path, str(options["on_bad_lines"]))

    def answer(
        self, runtime: Runtime, tokenizer: Any, case: Any, options: Mapping[str, OptionValue]
    ) -> CaseResult:
        from quantforge.space.generation import prompt_tokens

        from quantforge_tasks.exact_match import compile_regex, score
        from quantforge_tasks.generate import greedy

        stop = str(options["stop"])
        ids = prompt_tokens(tokenizer, str(options["prompt"]).format(question=case.question))
        text, stopped = greedy(
            runtime,
            tokenizer,
            ids,
            int(options["max_new_tokens"]),
            lambda t: bool(stop) and stop in t.lstrip(),
        )
        if stop and stop in text.lstrip():
            head = text[: len(text) - len(text.lstrip())]
            text = head + text.lstrip().split(stop, 1)[0]
        return score(case, text, stopped, compile_regex(str(options["answer_regex"])))


def _evaluators() -> Sequence[Evaluator]:
    from quantforge_tasks.lmeval import LmEval

    return [ToolCalling(), ExactMatch(), LmEval()]


@hookimpl
def register_evaluators(register: Callable[[Evaluator], None]) -> None:
    for evaluator in _evaluators():
        register(evaluator)
