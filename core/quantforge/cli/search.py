"""``quantforge search MODEL --target rpi5 --max-kld 0.03``: the smallest variant that meets it."""

from __future__ import annotations

import argparse
import json

from quantforge.choosing.search import Search, SearchResult, figures_text
from quantforge.cli.common import calibration_from_args
from quantforge.errors import NoAnswerError
from quantforge.running.constraints import (
    Constraints,
    SearchSettings,
    parse_percent,
    parse_size_mb,
)
from quantforge.running.recipe import RunConfig


def constraints_from(args: argparse.Namespace, target: str = "") -> Constraints:
    """The constraint flags both ``search`` and ``recommend`` take."""
    return Constraints(
        target=target,
        max_kld=args.max_kld,
        max_ppl_increase=parse_percent(args.max_ppl_increase) if args.max_ppl_increase else None,
        min_decode_tps=args.min_decode_tps,
        context=getattr(args, "context", None),
        max_size_mb=parse_size_mb(args.max_size) if getattr(args, "max_size", None) else None,
        bpw=getattr(args, "bpw", None),
    )


def report(result: SearchResult) -> list[str]:
    """The search's answer and why every other candidate lost."""
    lines = []
    if result.winner:
        w = result.winner
        lines.append(
            f"Answer: {w.spec} ({w.name}): {figures_text(w.measured)} [measured on {w.measured_on}]"
        )
        if result.runner_up:
            r = result.runner_up
            lines.append(
                f"Runner-up on the size/KL Pareto front: {r.spec}: {figures_text(r.measured)}"
                + ("" if r.state == "passed" else f" (lost: {r.reason})")
            )
    lines.append("Why the others lost:")
    for c in result.candidates:
        if c is result.winner:
            continue
        figures = f" [{figures_text(c.measured)}]" if c.measured else ""
        lines.append(f"  {c.spec:<26} {c.state:<8} {c.reason}{figures}")
    tried = len(result.trials)
    lines.append(f"{tried} trials recorded in {result.out / 'results.sqlite'}")
    if result.winner:
        lines.append(f"Next: quantforge results {result.out}   or   quantforge cards {result.out}")
    return lines


def search_command(args: argparse.Namespace) -> int:
    constraints = constraints_from(args, args.target)
    config = RunConfig(
        model=args.model,
        variants=[],
        output=args.out,
        revision=args.revision,
        eval_text=args.eval_text,
        calibration=calibration_from_args(args),
        allow_pickle=args.allow_pickle,
        search=SearchSettings(constraints, args.budget_minutes, tuple(args.method)),
    )
    return run_search(config, args.json)


def run_search(config: RunConfig, as_json: bool) -> int:
    """Run the search a ``RunConfig`` carries (from the command line or a recipe)."""
    assert config.search is not None
    constraints = config.search.constraints
    search = Search(
        config.model,
        constraints,
        config.output,
        methods=config.search.methods,
        budget_minutes=config.search.budget_minutes,
        calibration=config.calibration,
        allow_pickle=config.allow_pickle,
        eval_text=config.eval_text,
        revision=config.revision,
        log=(lambda _: None) if as_json else print,
    )
    result = search.run()
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        for line in report(result):
            print(line)
    if result.winner is None:
        closest = result.closest()
        why = "the --budget-minutes ran out" if result.budget_spent else "no installed method"
        raise NoAnswerError(
            f"{why} meets {constraints.describe()} on {constraints.target}"
            + (f"; closest: {closest.spec} ({closest.reason})" if closest else ""),
            hint="loosen a constraint, add methods (pip install a plugin), or give more time"
            if result.budget_spent
            else "loosen a constraint or install more methods",
        )
    return 0


def recommend_command(args: argparse.Namespace) -> int:
    from quantforge.choosing.recommend import recommend
    from quantforge.store.facts import RunFacts

    constraints = constraints_from(args)
    facts = RunFacts.load(args.run_dir)
    found = recommend(facts, constraints, args.target)
    if args.json:
        print(json.dumps([r.as_dict() for r in found], indent=2))
        return 0
    print(f"Recommendations for {args.run_dir} ({constraints.describe()}):")
    for r in found:
        print(f"  {r.line()}")
    return 0
