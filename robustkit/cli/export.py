"""``robustkit export``: write a trained run as one ONNX file with robustkit metadata."""

from __future__ import annotations

from pathlib import Path

import typer

from robustkit.cli.common import EXAMPLES
from robustkit.onnx_export import export_onnx


def register(app: typer.Typer) -> None:
    @app.command("export", epilog=EXAMPLES["export"])
    def export_cmd(
        run_dir: Path = typer.Argument(..., help="Run directory written by `robustkit train --out`."),
        out: Path = typer.Option(..., "--out", help="The .onnx file to write (the one command whose --out is a "
                                                    "file: it writes nothing else)."),
        no_check: bool = typer.Option(False, "--no-check", help="Skip the onnxruntime == torch check."),
    ) -> None:
        """Export RUN_DIR's model to ONNX (checked against torch with onnxruntime)."""
        path = export_onnx(run_dir, out, check=not no_check)
        typer.echo(f"wrote {path} ({path.stat().st_size} bytes)")
