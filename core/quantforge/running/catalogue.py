"""Catalogues: one recipe, many base models (``[model] ids = [...]`` or ``list = "FILE"``),
each model's run writing to ``OUTPUT/<last part of its id>``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from quantforge.errors import RecipeError
from quantforge.running.recipe import RunConfig, check_keys, expect, parse_recipe, read_recipe


def load_recipes(path: Path, output: Path | None = None) -> list[RunConfig]:
    """A recipe's runs: one, or one per model of a catalogue (``[model] ids`` or ``list``),
    each writing to ``OUTPUT/<name>`` where ``<name>`` is the last part of its id."""
    data = read_recipe(path)
    model = data.get("model")
    if not isinstance(model, dict) or not ({"ids", "list"} & set(model)):
        return [parse_recipe(data, base_dir=path.parent, output=output)]
    check_keys("[model]", model, {"ids", "list"})
    if "ids" in model and "list" in model:
        raise RecipeError("[model] has both ids and list", hint="keep one of them")
    if "search" in data:
        raise RecipeError(
            "a [search] recipe names one model",
            hint="write one recipe per model, or list variants instead of [search]",
        )
    ids = _model_ids(model, path.parent)
    configs: list[RunConfig] = []
    folders: dict[str, str] = {}
    for model_id in ids:
        config = parse_recipe({**data, "model": {"id": model_id}}, path.parent, output)
        folder = _folder_name(model_id)
        if folder in folders:
            raise RecipeError(
                f"models {folders[folder]!r} and {model_id!r} would share the output folder "
                f"{folder!r}",
                hint="list each model once, or run them from separate recipes",
            )
        folders[folder] = model_id
        configs.append(replace(config, output=config.output / folder))
    return configs


def _model_ids(model: Mapping[str, Any], base_dir: Path) -> list[str]:
    """The model ids of a catalogue: ``ids`` as given, or ``list``'s lines (a path in
    the list is taken from the list's folder)."""
    if "ids" in model:
        ids = expect("model.ids", model["ids"], list, "a list of model ids")
        for i, item in enumerate(ids):
            expect(f"model.ids[{i}]", item, str, "a model id")
        listed = [str(item) for item in ids]
        where = base_dir
    else:
        name = expect("model.list", model["list"], str, "a path")
        list_path = base_dir / name
        try:
            lines = list_path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"cannot read the model list {str(list_path)!r}: {exc}") from None
        listed = [ln.split("#", 1)[0].strip() for ln in lines]
        listed = [ln for ln in listed if ln]
        where = list_path.parent
    if not listed:
        raise RecipeError("the catalogue names no models", hint="add model ids to [model] ids")
    return [str(where / m) if (where / m).exists() else m for m in listed]


def _folder_name(model_id: str) -> str:
    """``org/name`` or ``path/to/name`` -> ``name``, safe as a folder name."""
    last = model_id.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", last).strip(".-") or "model"
