"""The ``edgezo`` command line: one module per command under ``edgezo.app.commands``."""

from __future__ import annotations

import sys

import click

from edgezo import __version__
from edgezo.app.commands.coordinate import coordinate
from edgezo.app.commands.evaluate import evaluate
from edgezo.app.commands.export import export
from edgezo.app.commands.generate import generate
from edgezo.app.commands.join import join
from edgezo.app.commands.keys import keys
from edgezo.app.commands.profile import profile
from edgezo.app.commands.simulate import simulate
from edgezo.errors import EdgezoError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgezo")
def cli():
    """Federated fine-tuning of language models on edge devices with FedSPZO.

    Devices run forward passes only and exchange random seeds and scalar projected gradients.
    Start with `edgezo simulate` (many virtual devices in one process); run a real federation
    with `edgezo coordinate` on a server and `edgezo join --broker HOST` on each device.
    """


cli.add_command(simulate)
cli.add_command(coordinate)
cli.add_command(join)
cli.add_command(keys)
cli.add_command(profile)
cli.add_command(evaluate)
cli.add_command(generate)
cli.add_command(export)


def main(argv=None) -> None:
    """Entry point: user errors print one line and exit 2, with no traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except EdgezoError as e:
        click.echo(f"edgezo: error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("edgezo: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("edgezo: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
