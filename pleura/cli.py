"""``pleura`` command line: a thin layer over the library that owns the terminal."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pleura import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Lung-ultrasound AI toolkit.")
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print one clear error line and exit non-zero."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def progress_bar() -> Progress:
    """The progress bar every long command shows (on stderr)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="Output folder (must be empty or absent unless --overwrite)."),
    n: int = typer.Option(60, "--n", help="Number of clips; the dataset has n x frames images."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives identical files."),
    size: int = typer.Option(256, "--size", help="Image side in pixels (at least 64)."),
    probe: str = typer.Option("mixed", "--probe", help="linear, curvilinear or mixed."),
    classes: str = typer.Option("covid,pneumonia,normal", "--classes", help="Comma-separated diagnoses."),
    frames: int = typer.Option(1, "--frames", help="Frames per clip (lung sliding over a clip)."),
    workers: int = typer.Option(0, "--workers", help="Worker processes; 0 = all cores."),
    gallery: bool = typer.Option(False, "--gallery", help="Also write gallery.png, a contact sheet with overlays."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty output folder."),
) -> None:
    """Simulate lung-ultrasound frames with anatomy, dense and sparse masks and a manifest."""
    import time

    from pleura.simulate import SimulationConfig, SimulationError, write_dataset

    cfg = SimulationConfig(
        n=n,
        seed=seed,
        size=size,
        probe=probe,
        classes=tuple(c.strip() for c in classes.split(",") if c.strip()),
        frames=frames,
        workers=workers,
    )
    try:
        cfg.validate()
    except SimulationError as e:
        fail(str(e))
    start = time.perf_counter()
    total = cfg.n * cfg.frames
    try:
        with progress_bar() as bar:
            task = bar.add_task("simulate", total=total, rate="")

            def step(k: int) -> None:
                bar.advance(task, k)
                done = bar.tasks[0].completed
                bar.update(task, rate=f"{done / max(time.perf_counter() - start, 1e-9):.0f} frames/s")

            manifest = write_dataset(cfg, out, overwrite=overwrite, gallery=gallery, progress=step)
    except SimulationError as e:
        fail(str(e))
    seconds = time.perf_counter() - start
    typer.echo(f"wrote {total} frames of {cfg.n} clips to {manifest.parent} in {seconds:.1f} s ({manifest})")
    if gallery:
        typer.echo(f"gallery: {manifest.parent / 'gallery.png'}")


def main() -> None:
    """Entry point of the ``pleura`` script."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
