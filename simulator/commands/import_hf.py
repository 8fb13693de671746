"""Command stage: `moesim import-hf`, write (or print) a model spec from a Hugging Face config.json."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from simulator.config.import_hf import import_file


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path, help="a Hugging Face config.json, or the model directory that holds it")
    parser.add_argument("--out", type=Path, help="write the model spec here (default: print it)")
    parser.add_argument("--name", help="model name (default: from the config or its folder)")


def command(args, console) -> int:
    text, model, notes, unknown = import_file(args.config, args.name)
    if args.out:
        from simulator.files import OutputError, write_atomic

        if args.out.is_dir():
            raise OutputError(f"--out {args.out}: is a directory; give the model YAML file to write")
        from simulator.config.schema import schema_comment

        try:  # the first line names the model schema for editors (docs/scenarios.md, editor support)
            write_atomic(args.out, schema_comment(args.out, "model") + text)
        except OutputError as exc:
            raise OutputError(f"--out {exc}") from None
        console.print(
            f"wrote {args.out} ({model.name}: {model.num_layers} layers, "
            f"{model.num_experts or 'dense'}{' experts' if model.num_experts else ''})"
        )
    else:
        print(text, end="")
    for n in notes:
        console.print(f"[yellow]approximated[/yellow]: {escape(n)}", highlight=False)
    if unknown:
        console.print(
            f"[red]not understood[/red] (left out of the spec): {escape(', '.join(unknown))}", highlight=False
        )
    return 0
