"""Terminal rendering of facts (rich tables on stdout)."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from qexport.envinfo import environment

console = Console()


def print_info(as_json: bool = False) -> None:
    env = environment()
    if as_json:
        print(json.dumps(env, indent=2))
        return
    table = Table(title="qexport environment", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("python", env["python"])
    table.add_row("platform", env["platform"])
    for name, version in env["libraries"].items():
        table.add_row(name, version or "[dim]not installed[/dim]")
    cpu = env["cpu"]
    table.add_row("cpu", f"{cpu['model']} ({cpu['logical_cores']} logical cores)")
    for label, present in cpu["isa"].items():
        table.add_row(f"  {label}", "yes" if present else "no")
    table.add_row("gpu", ", ".join(env["gpus"]) or "none")
    console.print(table)
