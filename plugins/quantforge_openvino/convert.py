"""HF -> OpenVINO IR with OpenVINO's PyTorch frontend, as a stateful model that keeps its KV cache.

optimum-intel does this export too, but its releases pin transformers < 5.6. Here the
decoder is wrapped so the KV cache is explicit tensors (``past_key_values.N.key`` in,
``present.N.key`` out), traced by ``openvino.convert_model``, and then made stateful with
OpenVINO's own ``apply_make_stateful_transformation``: the cache lives inside the infer
request, as in the models optimum-intel exports, and the IR takes only ``input_ids`` and
``attention_mask``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantforge.errors import QuantforgeError
from quantforge.model.artifacts import copy_files

MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
)


def _cache_wrapper(model: Any) -> Any:
    """A module whose forward takes and returns the KV cache as flat tensors."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = model.config.num_hidden_layers

    class KVCacheAsTensors(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past: torch.Tensor
        ) -> tuple[torch.Tensor, ...]:
            cache = DynamicCache(config=self.model.config)
            for i in range(layers):
                # full-attention cache layers throughout: a sliding-window layer counts its
                # length in a Python int, which tracing would freeze; the window itself is in
                # the attention mask, which the model builds from its config either way
                cache.layers[i] = DynamicLayer()
                # set the layer's tensors directly: its lazy first update would trace a
                # concatenation with an empty tensor that OpenVINO cannot type
                layer = cache.layers[i]
                layer.dtype, layer.device = past[0].dtype, past[0].device
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
                layer.is_initialized = True
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                past_key_values=cache,
                use_cache=True,
            )
            present: list[torch.Tensor] = []
            for i in range(layers):
                present += [
                    out.past_key_values.layers[i].keys,
                    out.past_key_values.layers[i].values,
                ]
            return (out.logits, *present)

    return KVCacheAsTensors()


def convert(source: Path, output: Path, weights: str) -> dict[str, Any]:
    """Write ``openvino_model.xml``/``.bin`` for the HF model in ``source``."""
    import openvino as ov
    import torch
    from openvino._offline_transformations import apply_make_stateful_transformation
    from transformers import AutoModelForCausalLM

    # trace through SDPA where the family has it; Gemma 2 and others have only eager attention
    attention = "sdpa"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.float32, attn_implementation=attention
        )
    except ValueError as exc:
        if "scaled_dot_product_attention" not in str(exc):
            raise
        attention = "eager"
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch.float32, attn_implementation=attention
        )
    model.eval()
    config = model.config
    layers = config.num_hidden_layers
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    # trace with a non-empty cache and a multi-token query, so the general attention-mask
    # path is the one recorded (an empty cache or one token would take shortcuts)
    past_len, new_len = 4, 8
    example_ids = torch.full((1, new_len), 3, dtype=torch.long)
    example_mask = torch.ones(1, past_len + new_len, dtype=torch.long)
    example_past = [torch.zeros(1, kv_heads, past_len, head_dim) for _ in range(2 * layers)]
    try:
        with torch.no_grad():
            ov_model = ov.convert_model(
                _cache_wrapper(model), example_input=(example_ids, example_mask, *example_past)
            )
    except Exception as exc:
        raise QuantforgeError(
            f"OpenVINO's PyTorch frontend could not convert {config.model_type!r}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
            hint="see the step log; export this model to gguf or onnx instead",
        ) from exc
    past_names = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present_names = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    for port, name in zip(
        ov_model.inputs, ["input_ids", "attention_mask", *past_names], strict=True
    ):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, ["logits", *present_names], strict=True):
        port.get_tensor().set_names({name})
    # batch 1: a stateful cache starts empty, and its batch axis must be known to start it
    shapes: dict[str, list[int]] = {"input_ids": [1, -1], "attention_mask": [1, -1]}
    shapes.update({name: [1, kv_heads, -1, head_dim] for name in past_names})
    ov_model.reshape(shapes)
    apply_make_stateful_transformation(ov_model, dict(zip(past_names, present_names, strict=True)))
    ov.save_model(ov_model, output / MODEL_XML, compress_to_fp16=weights == "f16")
    copy_side_files(source, output)
    return {
        "layers": layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "weights": weights,
        "attention": attention,
    }


def copy_side_files(source: Path, output: Path) -> None:
    copy_files(source, output, SIDE_FILES)
