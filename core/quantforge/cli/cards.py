"""``quantforge cards RUN_DIR``: model cards for the variants of a run, from its results store."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path


def cards_command(args: argparse.Namespace) -> int:
    from quantforge.publishing.cards import CardOptions, check_card_libraries, write_cards
    from quantforge.publishing.repo_names import check_repo_id, repo_ids
    from quantforge.store.facts import RunFacts

    check_card_libraries("quantforge cards")
    run_dir: Path = args.run_dir
    facts = RunFacts.load(run_dir)  # refuses a folder without a results store
    out: Path = args.out or run_dir / "cards"
    if args.base_model:
        check_repo_id(args.base_model, "the base model")
    ids = repo_ids(facts, args.namespace, args.repo_name) if args.namespace else {}
    options = CardOptions(
        base_model=args.base_model,
        repo_ids=ids,
        quantized_by=args.quantized_by,
        license=args.license,
        plot=None if args.no_plot else "plot",
    )
    # write into a staging folder first: a failure leaves no half-written cards behind
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cards-", dir=out.parent) as tmp:
        written = write_cards(facts, Path(tmp) / "cards", options, args.variant)
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(Path(tmp) / "cards"), out)
    print(f"Wrote {len(written)} cards to {out}")
    print(
        f"Family card: {out / 'README.md'}; push them with the variants: `quantforge push {run_dir}`"
    )
    return 0
