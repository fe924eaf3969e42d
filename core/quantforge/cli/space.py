"""``quantforge space build|push|serve``: the Gradio Space of a run."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any


def _check_space_libraries(owner: str) -> None:
    from quantforge.publishing.cards import CARD_LIBRARIES, check_card_libraries

    check_card_libraries(owner, ("gradio", *CARD_LIBRARIES), "space")


def build_command(args: argparse.Namespace) -> int:
    _check_space_libraries("quantforge space build")
    from quantforge.space.build import build

    out: Path = args.out or args.run_dir / "space"
    catalog = build(
        args.run_dir,
        out,
        namespace=args.namespace,
        scheme=args.repo_name,
        layout=args.layout,
        base_model=args.base_model,
        license_=args.license,
    )
    print(f"Wrote the Space to {out} ({len(catalog.variants)} variants):")
    for v in catalog.variants:
        print(
            f"  {v.name}: {v.format} on {v.target or 'no measured target'}, from {v.where or '-'}"
        )
    print(f"Try it: quantforge space serve {out}")
    if args.namespace:
        print(f"Publish it: quantforge space push {out} --repo-id {args.namespace}/NAME")
    return 0


def push_command(args: argparse.Namespace) -> int:
    _check_space_libraries("quantforge space push")
    from huggingface_hub import HfApi

    from quantforge.space.build import push_space

    commit = push_space(
        HfApi(),
        args.space_dir,
        args.repo_id,
        private=args.private,
        overwrite=args.overwrite,
        dry_run=args.dry_run,
    )
    if args.dry_run:
        print("Dry run: nothing was created or uploaded.")
    elif commit is None:
        print(f"The Space {args.repo_id} already holds exactly these files.")
    else:
        print(f"Pushed the Space {args.repo_id} in commit {commit[:10]}.")
    return 0


def serve(path: Path, args: argparse.Namespace) -> Any:
    """Serve a Space folder, or a run folder (its Space is built into RUN/space first)."""
    _check_space_libraries("quantforge space serve")
    from quantforge.space.build import APP_FILE, CATALOG_FILE, build
    from quantforge.space.engine import Limits

    folder = path
    if not (path / CATALOG_FILE).is_file():
        folder = path / "space"
        build(path, folder)
    spec = importlib.util.spec_from_file_location("quantforge_space_app", folder / APP_FILE)
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    limits = Limits(
        max_new_tokens=args.max_new_tokens,
        time_limit_s=args.time_limit,
        memory_budget_mb=args.memory_budget_mb,
    )
    print(f"Serving {folder} on http://{args.host}:{args.port} (Ctrl+C to stop)")
    return app.serve(folder, host=args.host, port=args.port, limits=limits)


def serve_command(args: argparse.Namespace) -> int:
    serve(args.path, args)
    return 0
