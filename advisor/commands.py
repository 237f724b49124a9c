"""Registration of the commands that live outside the core module (measure, fit, plan, ...)."""
from __future__ import annotations

import click


def register(main: click.Group) -> None:
    @main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                    "help_option_names": []}, add_help_option=False)
    @click.pass_context
    def measure(ctx):
        """Run ground-truth benchmarks on a real GPU (needs the 'measure' extra: torch etc.)."""
        try:
            from measurement.cli import measure_command
        except ImportError as e:
            click.echo(f"error: advisor measure needs the measure extra: pip install 'llm-deploy-advisor[measure]' "
                       f"({e})", err=True)
            raise SystemExit(2)
        measure_command.main(args=ctx.args, prog_name="advisor measure", standalone_mode=True)
