"""Names and metadata on the Hub: a variant's repo id from a naming scheme, checks of repo
ids, and the base model's license as its own card states it.
"""

from __future__ import annotations

import re
from pathlib import Path

from quantforge.errors import UsageError
from quantforge.publishing.card_data import nominal_bits
from quantforge.store.facts import RunFacts

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


DEFAULT_REPO_SCHEME = "{base}-{method}-{bits}"


def repo_ids(facts: RunFacts, namespace: str, scheme: str = DEFAULT_REPO_SCHEME) -> dict[str, str]:
    """Hub repo id of every built variant (the base is not republished).

    ``scheme`` may use ``{base}`` (the base model's name), ``{method}``, ``{bits}``
    (``4bit``), ``{preset}`` and ``{variant}``. Two variants the scheme would name alike
    (the same method and bits, other options) fall back to ``{base}-{variant}``.
    """
    base = facts.base_name
    names: dict[str, str] = {}
    for v in facts.variants:
        if v.name == "base":
            continue
        bits = nominal_bits(v)
        fields = {
            "base": base,
            "method": v.spec.get("method") or v.name,
            "bits": f"{bits}bit" if bits is not None else "export",
            "preset": v.spec.get("preset") or "",
            "variant": v.name,
        }
        try:
            names[v.name] = scheme.format(**fields).strip("-")
        except (KeyError, IndexError) as exc:
            raise UsageError(
                f"repo naming scheme {scheme!r} uses an unknown field {exc}",
                hint="use {base}, {method}, {bits}, {preset} and {variant}",
            ) from None
    taken = list(names.values())
    for name, repo in names.items():
        if taken.count(repo) > 1:
            names[name] = f"{base}-{name}"
    ids = {name: f"{namespace}/{repo}" for name, repo in names.items()}
    for repo_id in ids.values():
        check_repo_id(repo_id, "a variant")
    return ids


def check_repo_id(repo_id: str, what: str) -> None:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id or len(repo_id) > 96:
        raise UsageError(
            f"{repo_id!r} is not a valid Hub repo id for {what}",
            hint="use NAMESPACE/NAME with letters, digits, '-', '_' and '.'",
        )


def base_license(facts: RunFacts, base_model: str | None = None) -> str | None:
    """The license in the base model's own card: the local folder's ``README.md``, else
    the card of ``base_model`` on the Hub (``None`` when neither says)."""
    from huggingface_hub import ModelCard

    base = next((v for v in facts.variants if v.name == "base"), None)
    folder = base.path if base and base.path else Path(str(facts.run["base_model"]))
    readme = folder / "README.md"
    if readme.is_file():
        card = ModelCard.load(readme)
    elif base_model:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            card = ModelCard.load(base_model)
        except (HfHubHTTPError, OSError, ValueError):
            return None  # no card, or the Hub is out of reach: the card says "other"
    else:
        return None
    license_ = card.data.get("license")
    return str(license_) if license_ else None


def license_metadata(license_: str | None) -> dict[str, str]:
    """``license`` metadata; without a known license, the Hub's ``other`` plus a name."""
    if license_:
        return {"license": license_}
    return {"license": "other", "license_name": "same-as-base-model"}


def hub_url(repo_id: str | None, revision: str | None = None) -> str | None:
    if not repo_id:
        return None
    return f"https://huggingface.co/{repo_id}" + (f"/tree/{revision}" if revision else "")
