"""quantforge Space: a model's quantized variants side by side, with their measured trade-offs.

Run it with ``quantforge space serve RUN`` (or ``python app.py`` inside a folder made by
``quantforge space build RUN``, as a Hugging Face Space does). It reads the folder's
``quantforge-space.json`` (which variants, where their files are) and ``results.sqlite``
(the run's measurements).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("quantforge") is None:  # on the Hub: the copy made by `space build`
    sys.path.insert(0, str(HERE / "vendor"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from quantforge.choosing.recommend import DEFAULT_CONSTRAINTS, recommend  # noqa: E402
from quantforge.errors import QuantforgeError  # noqa: E402
from quantforge.publishing.plot import pareto_plot  # noqa: E402
from quantforge.space.build import fit_table, tradeoff_table  # noqa: E402
from quantforge.space.engine import Limits, Panel, SideBySide  # noqa: E402
from quantforge.space.generation import Sampling  # noqa: E402

SLOTS = 4  # output columns; Limits.max_variants may not exceed it
CSS = """
.qf-text { white-space: pre-wrap; font-family: ui-monospace, monospace; min-height: 6em; }
.qf-diverged { background: #ffe08a; color: inherit; }
.qf-slot:not(:has(.qf-text)) { display: none !important; }  /* unused columns take no room */
"""


def _slot(panel: Panel | None, catalog_line: str) -> list[Any]:
    if panel is None:
        return [gr.update(value="", visible=False)] * 3
    stats = panel.stats()
    if panel.divergence():
        stats += f"  \n{panel.divergence()}"
    return [
        gr.update(value=f"### {panel.name}\n{catalog_line}", visible=True),
        gr.update(value=panel.html(), visible=True),
        gr.update(value=stats, visible=True),
    ]


def build_app(folder: Path = HERE, limits: Limits | None = None) -> gr.Blocks:
    """The Blocks app for a Space folder, queued with the abuse limits."""
    limits = limits or Limits()
    if limits.max_variants > SLOTS:
        raise ValueError(f"max_variants may be at most {SLOTS}")
    engine = SideBySide(folder, limits)
    catalog, facts = engine.catalog, engine.facts
    lines = {
        v.name: f"{v.method} · {v.bits} bits · {v.format} · `{v.where}`" for v in catalog.variants
    }
    blocked = engine.not_runnable()
    names = [v.name for v in catalog.variants]
    runnable = [n for n in names if n not in blocked]
    default = (["base"] if "base" in runnable else []) + [n for n in runnable if n != "base"][:1]
    measured = facts.targets("measured")
    plot_dir = Path(tempfile.mkdtemp(prefix="quantforge-space-"))
    plot = pareto_plot(facts, plot_dir / "tradeoffs.png")

    def generate(
        prompt: str, chosen: list[str], max_new: float, temperature: float, seed: float
    ) -> Iterator[list[Any]]:
        started = time.monotonic()
        chosen = list(chosen or [])
        try:
            sampling = Sampling(int(max_new), float(temperature), int(seed))
            note = f"Generating with {len(chosen)} variants..."
            panels: list[Panel] = []
            for panels in engine.compare(chosen, prompt, sampling):
                yield _render(note, panels)
            took = time.monotonic() - started
            yield _render(
                f"Done in {took:.1f} s. Speeds are measured live on this machine, each "
                "variant timed on its own model calls.",
                panels,
            )
        except QuantforgeError as exc:
            yield _render(f"**Error:** {exc}", [])

    def compare(
        prompt: str,
        variants: list[str],
        max_new_tokens: int = 48,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Generate with each variant to the end; their answers, live speeds and where each
        leaves the base's tokens (or ``error``: what was wrong with the request)."""
        try:
            sampling = Sampling(int(max_new_tokens), float(temperature), int(seed))
            panels: list[Panel] = []
            for update in engine.compare(list(variants or []), prompt, sampling):
                panels = update
            return {"panels": [p.as_dict() for p in panels]}
        except QuantforgeError as exc:
            return {"error": str(exc)}

    def _render(note: str, panels: list[Panel]) -> list[Any]:
        out: list[Any] = [note]
        for i in range(SLOTS):
            panel = panels[i] if i < len(panels) else None
            out += _slot(panel, lines.get(panel.name, "") if panel else "")
        return out

    def table() -> dict[str, Any]:
        """Every measured target's rows, the target named in the first column."""
        headers: list[str] = []
        rows: list[list[str]] = []
        for target in measured:
            headers, target_rows = tradeoff_table(facts, target)
            rows += [[target, *row] for row in target_rows]
        return {"headers": ["measured on", *headers], "data": rows}

    with gr.Blocks(title=catalog.title) as demo:
        gr.Markdown(f"# {catalog.title}", elem_id="qf-title")
        gr.Markdown(
            f"Run `{catalog.run_id}`. Pick variants, give one prompt, and compare their "
            "answers with their speed measured live. Text after the point where a variant "
            "leaves the base's answer is highlighted.",
            elem_id="qf-intro",
        )
        prompt = gr.Textbox(
            label="Prompt",
            lines=3,
            max_length=limits.max_prompt_chars,
            placeholder="Type a prompt",
            elem_id="qf-prompt",
        )
        chosen = gr.CheckboxGroup(
            choices=names,
            value=default,
            label=f"Variants (up to {limits.max_variants})",
            elem_id="qf-variants",
        )
        gr.Markdown(
            "\n".join(f"- **{n}** is not runnable here: {why}" for n, why in blocked.items()),
            visible=bool(blocked),
            elem_id="qf-not-runnable",
        )
        with gr.Row():
            max_new = gr.Slider(
                1,
                limits.max_new_tokens,
                value=min(48, limits.max_new_tokens),
                step=1,
                label="Max new tokens",
                elem_id="qf-max-new-tokens",
            )
            temperature = gr.Slider(
                0, 2, value=0, step=0.05, label="Temperature (0: greedy)", elem_id="qf-temperature"
            )
            seed = gr.Number(value=0, precision=0, label="Seed", elem_id="qf-seed")
        button = gr.Button("Generate", variant="primary", elem_id="qf-generate")
        status = gr.Markdown("", elem_id="qf-status")
        slots: list[Any] = []
        with gr.Row(equal_height=False):
            for i in range(SLOTS):
                with gr.Column(min_width=220, elem_id=f"qf-slot-{i}", elem_classes="qf-slot"):
                    slots.append(gr.Markdown(visible=False, elem_id=f"qf-name-{i}"))
                    slots.append(gr.HTML(visible=False, elem_id=f"qf-output-{i}"))
                    slots.append(gr.Markdown(visible=False, elem_id=f"qf-stats-{i}"))
        with gr.Accordion("Measured trade-offs", open=True, elem_id="qf-results"):
            gr.Markdown(
                f"**Recommended per target**: the smallest variant that keeps "
                f"{DEFAULT_CONSTRAINTS.describe()} (as `quantforge recommend` answers)\n\n"
                + "\n".join(f"- {r.line()}" for r in recommend(facts, DEFAULT_CONSTRAINTS)),
                elem_id="qf-recommendations",
            )
            gr.Dataframe(
                value=table(),
                type="array",
                interactive=False,
                wrap=True,
                elem_id="qf-table",
            )
            headers, rows = fit_table(facts)
            gr.Markdown(
                "Device fit: **estimates** from device profiles (weights, KV cache and "
                "overhead against the device's memory; decode from its memory bandwidth).",
                elem_id="qf-fit-note",
                visible=len(headers) > 1,  # a run with no device profile has nothing to show
            )
            gr.Dataframe(
                value={"headers": headers, "data": rows},
                type="array",
                interactive=False,
                wrap=True,
                elem_id="qf-fit",
                visible=len(headers) > 1,
            )
            gr.Image(
                value=str(plot) if plot else None,
                label="Size vs KL divergence (measured)",
                interactive=False,
                visible=plot is not None,
                elem_id="qf-plot",
            )
        button.click(  # type: ignore[call-arg]  # gradio's stub lacks time_limit
            generate,
            inputs=[prompt, chosen, max_new, temperature, seed],
            outputs=[status, *slots],
            api_name="generate",
            concurrency_limit=1,
            concurrency_id="models",
            time_limit=int(limits.time_limit_s) + 30,
        )
        gr.api(  # type: ignore[attr-defined]
            compare,
            api_name="compare",
            concurrency_limit=1,
            concurrency_id="models",
            time_limit=int(limits.time_limit_s) + 30,
        )
    queued: gr.Blocks = demo.queue(max_size=16, default_concurrency_limit=1)
    return queued


def serve(
    folder: Path = HERE,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    limits: Limits | None = None,
    block: bool = True,
) -> gr.Blocks:
    """Build and launch the app; with ``block=False`` return once the server is up."""
    demo = build_app(folder, limits)
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        css=CSS,
        footer_links=["api"],
        quiet=not block,
    )
    return demo


if __name__ == "__main__":
    serve(HERE, host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
