"""`edgezo keys`: this device's signing key for signed jobs (``coordinate --enrolled``).

``init`` makes the key (an Ed25519 PEM file, mode 0600, by default beside the device id in the
user's config folder) and prints its public line; ``show`` prints the line again. The operator
adds the line to the coordinator's enrolment file; ``edgezo join`` then signs with the key.
"""

from __future__ import annotations

from pathlib import Path

import click
from edgezo import signing
from edgezo.app.commands.join import default_device_id
from edgezo.coordinator.wire.topics import check_name

KEY_HELP = "The key file. [default: ~/.config/edgezo/device.key ($XDG_CONFIG_HOME/edgezo/device.key)]"
ID_HELP = "The device id the line enrols (join's --device-id). [default: this device's default id, ~/.config/edgezo/device-id]"


def _device_id(given: str | None) -> str:
    return check_name("device", given if given is not None else default_device_id())


@click.group()
def keys():
    """This device's signing key for signed jobs (coordinate --enrolled).

    Example: edgezo keys init, then send the printed line to the operator, who adds it to the
    file given to `edgezo coordinate --enrolled`; `edgezo join` signs with the key from then on.
    """


@keys.command()
@click.option("--key", "path", type=click.Path(dir_okay=False), help=KEY_HELP)
@click.option("--device-id", help=ID_HELP)
@click.option("--force", is_flag=True, help="Replace an existing key (the coordinator must then enrol the new line).")
def init(path, device_id, force):
    """Make this device's signing key and print its public line (to enrol with the coordinator)."""
    device_id = _device_id(device_id)
    target = signing.save_key(signing.generate(), path or signing.default_key_path(), force=force)
    key = signing.load_key(target)
    line = key.line(device_id)
    try:
        _pub(target).write_text(line + "\n", encoding="utf-8")  # `show` prints the same id
    except OSError:
        pass
    click.echo(f"made {target} (keep it private); enrol this device with the line:", err=True)
    click.echo(line)


@keys.command()
@click.option("--key", "path", type=click.Path(dir_okay=False), help=KEY_HELP)
@click.option("--device-id", help=ID_HELP)
def show(path, device_id):
    """Print this device's public line, 'ed25519:<base64> <device-id>', for the enrolment file."""
    target = path or signing.default_key_path()
    key = signing.load_key(target)
    if device_id is None:
        device_id = _id_made_with(key, target)
    click.echo(key.line(_device_id(device_id)))


def _pub(key_path) -> Path:
    key_path = Path(key_path)
    return key_path.with_name(key_path.name + ".pub")


def _id_made_with(key, key_path) -> str | None:
    """The device id `init` wrote beside the key (KEY.pub), if that file is this key's."""
    try:
        public, name = signing.parse_public(_pub(key_path).read_text(encoding="utf-8").strip())
    except (OSError, signing.SigningError):
        return None
    return name if public == key.public else None
