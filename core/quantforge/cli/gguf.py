"""``quantforge gguf-to-hf``: a GGUF file as a Hugging Face base folder."""

from __future__ import annotations

import argparse

from quantforge.errors import UsageError


def gguf_to_hf_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from quantforge.model.gguf import check_gguf_reader, dequantize_gguf

    if args.gguf.suffix != ".gguf" or not args.gguf.is_file():
        raise UsageError(
            f"{str(args.gguf)!r} is not a .gguf file", hint="pass the path of a .gguf file"
        )
    if args.out.exists():
        raise UsageError(
            f"{str(args.out)!r} already exists", hint="pick a new folder for --out, or delete it"
        )
    check_gguf_reader()
    console = Console(stderr=True)
    with console.status(f"dequantizing {args.gguf.name}...") as status:
        dequantize_gguf(args.gguf, args.out, lambda msg: status.update(msg))
    console.print(
        f"wrote {args.out}: its weights went through the GGUF's quantization once. "
        f"Next: `quantforge quantize {args.out} -v rtn:int4`"
    )
    return 0
