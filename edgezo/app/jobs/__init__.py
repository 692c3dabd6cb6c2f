"""The jobs behind the commands, as a library: each builds from the same settings the CLI parses
(``JobConfig`` and the command's settings dataclass), runs with ``run()`` and raises
``EdgezoError`` subclasses instead of exiting. ``edgezo.app.api`` exports them."""
