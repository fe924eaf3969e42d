"""The four hooks a quantforge plugin can implement.

A plugin is a module (or object) exposed through the ``quantforge`` entry-point group::

    [project.entry-points.quantforge]
    myplugin = "myplugin"

and implements any of the hooks below with :data:`hookimpl`. Every hook takes a
``register`` callback and returns nothing; all implementations are called. An
implementation may accept fewer arguments than the spec (hooks grow by adding
optional arguments).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from quantforge.interfaces import Evaluator, Exporter, Quantizer, Target

PROJECT = "quantforge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_quantizers(register: Callable[[Quantizer], None]) -> None:
    """Register quantizers: steps that turn a model format into a lower-precision one.

    :param register: call once per :class:`quantforge.interfaces.Quantizer` instance.

    A quantizer must provide ``name`` (unique among quantizers and exporters),
    ``input_format``, ``output_format``, ``options`` (an ``OptionSet`` with types,
    ranges, defaults and presets such as ``nf4``), ``needs_calibration``,
    ``requires`` (import names of optional packages) with the ``extra`` that
    installs them, and ``quantize(source, options, output, context)``, which
    writes the model into the empty folder ``output``. ``load_model`` loads its
    output when a plain ``from_pretrained`` cannot.

    Example::

        class Half(Quantizer):
            name = "half"
            output_format = "hf+half"
            options = OptionSet([Option("dtype", str, "float16", "storage dtype",
                                        choices=["float16", "bfloat16"])],
                                presets={"fp16": {"dtype": "float16"}})
            def quantize(self, source, options, output, context): ...

        @hookimpl
        def register_quantizers(register):
            register(Half())
    """


@hookspec
def register_exporters(register: Callable[[Exporter], None]) -> None:
    """Register exporters: steps that turn one format into another at the same precision.

    :param register: call once per :class:`quantforge.interfaces.Exporter` instance.

    An exporter provides ``name``, ``input_format``, ``output_format``, ``options``,
    ``requires``/``extra`` and ``export(source, options, output, context)``. The
    planner chains exporters in front of a quantizer whose ``input_format`` is not
    the base model's (``hf -export-> gguf -quantize-> gguf``).

    Example::

        @hookimpl
        def register_exporters(register):
            register(GGUFExporter())
    """


@hookspec
def register_targets(register: Callable[[Target], None]) -> None:
    """Register device targets: where variants run and are measured or estimated.

    :param register: call once per :class:`quantforge.interfaces.Target` instance.

    A target provides ``name``, ``formats`` (the format families it runs),
    ``measured`` (True when it runs variants on this machine), ``hardware()`` for
    provenance, ``unavailable_reason()`` and ``load(artifact, loader)`` returning a
    :class:`quantforge.interfaces.Runtime` with ``logits`` and ``generate``.

    Example::

        @hookimpl
        def register_targets(register):
            register(LocalCPU())
    """


@hookspec
def register_evaluators(register: Callable[[Evaluator], None]) -> None:
    """Register evaluators: measurements taken on every variant.

    :param register: call once per :class:`quantforge.interfaces.Evaluator` instance.

    An evaluator provides ``name``, ``options``, ``needs_runtime`` (False when it
    only reads files), ``needs_reference`` with ``prepare_reference`` (run once on
    the base model, e.g. to keep its logits), ``order``, and
    ``evaluate(artifact, runtime, options, context)`` returning
    :class:`quantforge.interfaces.Measurement` objects.

    Example::

        @hookimpl
        def register_evaluators(register):
            register(SizeOnDisk())
    """
