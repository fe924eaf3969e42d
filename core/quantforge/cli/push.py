"""``quantforge push RUN_DIR --namespace ORG``: one Hub repo and one commit per variant."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import NoReturn


def push_command(args: argparse.Namespace) -> int:
    from quantforge.publishing.cards import CardOptions, check_card_libraries
    from quantforge.publishing.repo_names import check_repo_id
    from quantforge.store.facts import RunFacts

    check_card_libraries("quantforge push")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils.tqdm import disable_progress_bars

    if not sys.stderr.isatty():  # bars in a log are noise, and may land after the error
        disable_progress_bars()

    from quantforge.publishing.push import plan_push, push, token_and_user

    run_dir: Path = args.run_dir
    facts = RunFacts.load(run_dir)  # refuses a folder without a results store
    if args.base_model:
        check_repo_id(args.base_model, "the base model")
    check_repo_id(f"{args.namespace}/x", "the namespace")
    api = HfApi()
    try:
        token_and_user(api, args.namespace)
        with tempfile.TemporaryDirectory(prefix="quantforge-push-") as staging:
            plans = plan_push(
                api,
                facts,
                Path(staging),
                namespace=args.namespace,
                scheme=args.repo_name,
                options=CardOptions(
                    base_model=args.base_model, quantized_by=args.quantized_by, license=args.license
                ),
                variants=args.variant,
                overwrite=args.overwrite,
                layout=args.layout,
                gguf_repo=args.gguf_repo,
            )
            for plan in plans:
                verb = {"create": "create", "update": "update", "unchanged": "keep"}[plan.action]
                print(
                    f"{verb} {plan.where}{' (private)' if args.private and not plan.exists else ''}: "
                    f"{len(plan.files)} files, {plan.size() / 1e6:.1f} MB"
                    + (f", {len(plan.changed)} changed" if plan.action == "update" else "")
                )
                if args.dry_run:
                    for path, file in sorted(plan.files.items()):
                        print(f"    {path} ({file.stat().st_size:,} bytes)")
            if args.collection:
                print(f"collection {args.namespace}: {args.collection!r} with {len(plans)} models")
            if args.dry_run:
                print("Dry run: nothing was created or uploaded.")
                return 0
            done = push(
                api,
                plans,
                private=args.private,
                collection=args.collection,
                namespace=args.namespace,
                base_model=args.base_model,
            )
    except RuntimeError as exc:  # huggingface_hub wraps a failed LFS upload in one
        cause = _cause(exc, (HfHubHTTPError, *_network_errors()))
        if cause is None:
            raise
        _raise_publish_error(cause)
    except HfHubHTTPError as exc:
        _raise_publish_error(exc)
    except _network_errors() as exc:
        _raise_publish_error(exc)
    print(
        f"Pushed {len(done['committed'])} repos ({len(done['created'])} new), "
        f"{len(done['unchanged'])} unchanged."
    )
    return 0


def _cause(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``types`` in the chain that ``exc`` was raised from."""
    seen: BaseException | None = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, types):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _raise_publish_error(exc: BaseException) -> NoReturn:
    """The Hub refused (an HTTP error) or could not be reached: one line, and the rerun."""
    from huggingface_hub.errors import HfHubHTTPError

    from quantforge.errors import PublishError

    if isinstance(exc, HfHubHTTPError):
        response = getattr(exc, "response", None)
        status = f"HTTP {response.status_code}" if response is not None else "no answer"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PublishError(
            f"the Hub refused the push ({status}: {first})",
            hint="fix the cause and rerun the same command: finished repos are kept, "
            "files already uploaded are not sent again",
        ) from None
    from huggingface_hub import constants

    raise PublishError(
        f"the push stopped: {constants.ENDPOINT} could not be reached "
        f"({type(exc).__name__}: {exc})",
        hint="rerun the same command when the network is back; nothing is uploaded twice",
    ) from None


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection failures: OSError, and the transport errors of the HTTP client
    huggingface_hub uses (``httpx2`` here, ``httpx`` in other releases)."""
    import contextlib
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(importlib.import_module(module).TransportError)
    return tuple(errors)
