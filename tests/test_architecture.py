"""The layer rules of docs/architecture.md, held as tests (issue 25).

Read from the source with ``ast`` (nothing imported), so an import hidden inside a function counts
as much as one at the top of a file: a rule a reader cannot see is not a rule.

- the core (every module of ``edgezo/`` but the application layer ``edgezo/app/`` and the entry
  points: keys, perturb, estimators, methods, aggregate, engine, seedlog, simulation, signing,
  config, planner, ...) imports neither a backend (``edgezo.backends``) nor the coordinator
  (``edgezo.coordinator``) nor the application layer (CLI, commands, jobs, engines, API,
  settings, outputs, plots);
- the backends and the coordinator do not import the application layer, and nothing but the
  application layer and the entry points does;
- a method's round (``method.local_round(``) is started from one place outside ``edgezo/methods``:
  ``edgezo.engine.device_round``, which the simulation, the Ray actors and a real device call;
- a method's name is resolved to its object (``method_of``) at the edge only (``NAME_TO_METHOD``);
- ``edgezo/`` and ``coordinator/`` import the package's modules at the top of a file, except the heavy ones
  (``LAZY_TARGETS``: they load torch or mlx) and the pairs in ``LAZY_PAIRS``;
- in the coordinator, the device side (``edgezo.coordinator.device``) imports nothing from the server
  side (``edgezo.coordinator.server``) and the server side nothing from the device side; the wire
  (``edgezo.coordinator.wire``) imports neither: what both sides need is the wire's;
- no function in the package is longer than ``MAX_LINES`` (its docstring not counted: a
  docstring says why, and is not what makes a function hard to follow).
"""

from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PACKAGE = {"edgezo": ROOT / "edgezo", "edgezo.backends": ROOT / "backends", "edgezo.coordinator": ROOT / "coordinator"}

# The application layer (edgezo/app/: CLI, commands, jobs, engines, API, settings, outputs, plots,
# run folders, simulate's fleet) and the package's entry points, which hand over to it: `edgezo`
# itself (its lazy __getattr__ re-exports the API: edgezo.simulate, edgezo.SimulateJob...),
# and `python -m edgezo`. Everything else in edgezo/ is the core.
APP = ("edgezo.app",)
ENTRY_POINTS = ("edgezo", "edgezo.__main__")
BELOW_APP = ("edgezo.backends", "edgezo.coordinator")


def _core() -> tuple[str, ...]:
    """Every module of edgezo/ that is neither the application layer, an entry point, nor the
    backends or the coordinator (which pyproject maps under edgezo.)."""
    return tuple(name for name in MODULES if _under(name, ("edgezo",)) and name not in ENTRY_POINTS
                 and not _under(name, APP + BELOW_APP))


MAX_LINES = 60


def _modules() -> dict[str, Path]:
    """Every module of the package by its import name."""
    found = {}
    for prefix, folder in PACKAGE.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((prefix, *parts))] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


CORE = _core()


def _imports(name: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import in module ``name``, at any depth, relative ones resolved."""
    out = []
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if f"{base}.{alias.name}" in MODULES]
    return out


def _offences(layer, forbidden) -> list[str]:
    return [f"{name} line {line} imports {target}" for name in MODULES if _under(name, layer)
            for line, target in _imports(name) if _under(target, forbidden)]


def test_the_module_lists_name_real_modules():
    """A rule over a misspelt or moved module would hold vacuously."""
    for name in APP + ENTRY_POINTS + BELOW_APP:
        assert any(_under(m, (name,)) for m in MODULES), f"{name} is no module of the package: update the lists"
    for name in ("edgezo.keys", "edgezo.perturb", "edgezo.methods", "edgezo.engine", "edgezo.simulation", "edgezo.config"):
        assert name in CORE, f"{name} is not counted as the core"
    assert not any(_under(name, APP) for name in CORE)


def test_the_core_imports_no_backend_coordinator_or_application():
    assert _offences(CORE, BELOW_APP + APP) == []


def test_backends_and_coordinator_do_not_import_the_application_layer():
    assert _offences(BELOW_APP, APP + ENTRY_POINTS[1:]) == []


def test_only_the_application_layer_and_the_entry_points_import_the_application_layer():
    outside = [name for name in MODULES if not _under(name, APP) and name not in ENTRY_POINTS]
    assert _offences(outside, APP) == []


def test_the_checker_sees_an_import_inside_a_function(tmp_path):
    """The rule's own check: a forbidden import hidden in a function body is found."""
    tree = ast.parse("def f():\n    from edgezo.backends.choice import build_executor\n")
    TREES["edgezo.keys"], saved = tree, TREES["edgezo.keys"]
    try:
        assert _offences(("edgezo.keys",), BELOW_APP) == ["edgezo.keys line 2 imports edgezo.backends.choice"]
    finally:
        TREES["edgezo.keys"] = saved


WIRE, SERVER, DEVICE = "edgezo.coordinator.wire", "edgezo.coordinator.server", "edgezo.coordinator.device"


def test_the_coordinators_sides_are_subpackages():
    """Every module of coordinator/ but the package itself is on one side (a module left at the top
    would be on none, and the rules below would not see it)."""
    loose = [n for n in MODULES if _under(n, ("edgezo.coordinator",)) and n != "edgezo.coordinator"
             and not _under(n, (WIRE, SERVER, DEVICE))]
    assert not loose, f"coordinator modules on no side (move them into wire/, server/ or device/): {loose}"
    for side in (WIRE, SERVER, DEVICE):
        assert sum(_under(n, (side,)) for n in MODULES) > 1, f"{side} has no modules"


def test_the_device_side_and_the_server_side_do_not_import_each_other():
    """A device runs without the coordinator's code and the coordinator without the device's: what
    both need (the messages, the topics, the checkpoint's format, the link) is the wire's."""
    assert _offences((DEVICE,), (SERVER,)) == []
    assert _offences((SERVER,), (DEVICE,)) == []
    assert _offences((WIRE,), (SERVER, DEVICE)) == []


def test_the_sides_rule_sees_a_cross_import():
    """The rule's own check: a device module importing a server module is found."""
    name = "edgezo.coordinator.device.device"
    TREES[name], saved = ast.parse("from edgezo.coordinator.server.log_service import LogService\n"), TREES[name]
    try:
        assert _offences((DEVICE,), (SERVER,)) == [f"{name} line 1 imports edgezo.coordinator.server.log_service"]
    finally:
        TREES[name] = saved


# What edgezo/ may import inside a function: the backends' framework modules (importing them
# loads torch or mlx, which `import edgezo` and `edgezo --help` must not), the package's lazy
# re-export of the API, and the pair of modules that import each other (a task file builds a
# task; a task name may be a task file).
LAZY_TARGETS = ("edgezo.backends.torch", "edgezo.backends.mlx", "edgezo.backends.int8")
LAZY_PAIRS = {("edgezo", "edgezo.app"), ("edgezo", "edgezo.app.api"), ("edgezo.tasks", "edgezo.taskfile"),
              ("edgezo.taskfile", "edgezo.tasks")}


def _imports_in_functions(name: str) -> list[tuple[int, str]]:
    inside = {id(n) for f in ast.walk(TREES[name]) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    lines = {n.lineno for n in ast.walk(TREES[name]) if id(n) in inside}
    return [(line, target) for line, target in _imports(name) if line in lines]


def test_the_packages_own_modules_are_imported_at_the_top_unless_heavy():
    """An import a reader cannot see at the top of a file hides an arrow; only a framework's
    import cost (or a genuine cycle) justifies one inside a function."""
    lazy = [f"{name} line {line} imports {target}" for name in MODULES
            if _under(name, ("edgezo",)) and not _under(name, ("edgezo.backends",))
            for line, target in _imports_in_functions(name)
            if _under(target, ("edgezo",)) and not _under(target, LAZY_TARGETS) and (name, target) not in LAZY_PAIRS]
    assert not lazy, f"lift these imports to the top of their files: {lazy}"


def _calls(attribute: str) -> list[str]:
    return [f"{name} line {node.lineno}" for name, tree in TREES.items() for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute]


def test_a_methods_round_is_started_from_one_place():
    """``method.local_round`` outside ``edgezo.methods``: only in ``edgezo.engine.device_round``."""
    outside = [c for c in _calls("local_round") if not c.startswith("edgezo.methods")]
    assert len(outside) == 1 and outside[0].startswith("edgezo.engine line"), outside


# Where a method's name becomes its object: the job's configuration (JobConfig.resolved_method: what
# options, TOML files and a coordinator's announcement carry), the CLI's list of methods, and the
# cost model's default Work. Everything else is handed the Method.
NAME_TO_METHOD = {"edgezo.config", "edgezo.costmodel", "edgezo.app.commands.options"}


def test_a_method_is_resolved_from_its_name_at_the_edge_only():
    callers = {c.partition(" line")[0] for c in
               [f"{name} line {node.lineno}" for name, tree in TREES.items() for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "method_of"]}
    outside = callers - NAME_TO_METHOD - {m for m in callers if _under(m, ("edgezo.methods",))}
    assert not outside, f"method_of(name) outside the edge (pass the Method object instead): {sorted(outside)}"
    assert "edgezo.config" in callers  # the rule's own check: the walk finds the edge's call


def _length(node) -> int:

    """Lines of a function, its docstring not counted."""
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def _functions(tree, prefix=""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")


def test_no_function_is_longer_than_sixty_lines():
    lengths = {(name, qual): _length(node) for name, tree in TREES.items() for qual, node in _functions(tree)}
    too_long = {key: n for key, n in lengths.items() if n > MAX_LINES}
    assert not too_long, f"functions over {MAX_LINES} lines (split them by what they do): {too_long}"
    assert lengths[("edgezo.app.jobs.simulate", "SimulateJob.run")] > 0  # the walk reaches methods


def test_the_length_rule_counts_code_not_the_docstring():
    tree = ast.parse("def f():\n    \"\"\"why\n    more\"\"\"\n" + "    x = 1\n" * (MAX_LINES + 1))
    ((_, node),) = list(_functions(tree))
    assert _length(node) == MAX_LINES + 2  # the def line and the body, not the docstring's two lines


def test_batches_and_streams_are_drawn_in_the_round_engine():
    """Which examples a device's round uses and which direction stream it probes are decided in
    ``edgezo.engine`` only (the coordinator also derives the streams, to check what a device owes)."""
    batches = [f"{n} line {node.lineno}" for n, tree in TREES.items() for node in ast.walk(tree)
               if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "device_batch_indices"]
    assert batches and all(c.startswith("edgezo.engine line") for c in batches), batches
    streams = [c for c in _calls("stream") if not c.startswith(("edgezo.engine line", "edgezo.coordinator.server.rounds line"))]
    assert streams == [c for c in streams if c.startswith("edgezo.backends.mlx")], streams  # mx.stream: MLX's, not a method's


def test_the_package_links_are_links():
    """``MqttLink`` and the signing wrapper over it are ``Link``s (the seam the coordinator and the
    device are typed against), and what they hand out is a ``Received``; an object lacking a
    member is not."""
    from edgezo.coordinator.wire.link import Link, Received
    from edgezo.coordinator.wire.signed_link import Opened, SignedLink
    from edgezo.coordinator.wire.transport import BrokerSettings, Message, MqttLink

    mqtt = MqttLink(BrokerSettings(), "architecture-test")  # not connected: nothing is opened
    assert isinstance(mqtt, Link) and isinstance(SignedLink(mqtt), Link)
    assert isinstance(Message("t", b"", False), Received) and isinstance(Opened("t", b"", False), Received)

    class NoGet:
        connections = 0

        def subscribe(self, topic_filter, qos=1): ...

        def publish(self, topic, payload, qos=1, retain=False): ...

        def close(self): ...

    assert not isinstance(NoGet(), Link)


def test_a_backend_is_its_folder_and_one_registration():
    """Every registered backend is defined in its own folder (``backends/<name>/backend.py``) and
    built by a factory there; ``choice.py`` names no backend (what differs is the registration's)."""
    from edgezo.backends.registry import BACKENDS, backend_of

    for name in BACKENDS:
        spec = backend_of(name)
        assert f"edgezo.backends.{name}.backend" in MODULES, f"{name} has no backends/{name}/backend.py"
        assert spec.factory.startswith(f"edgezo.backends.{name}.") and spec.factory.partition(":")[0] in MODULES
    literals = {node.value for node in ast.walk(TREES["edgezo.backends.choice"])
                if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not literals & set(BACKENDS), f"choice.py names backends: {sorted(literals & set(BACKENDS))}"


def test_every_package_folder_is_listed_for_the_wheel():
    """pyproject's explicit package list decides what a non-editable install ships: a folder of
    modules left out of it (edgezo.methods was, until this test) imports in an editable checkout
    and fails after `pip install .`."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, layout = set(setuptools["packages"]), setuptools["package-dir"]
    found = set()
    for package, folder in layout.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]) if relative.parts else package)
    assert found <= listed, f"add to pyproject.toml's packages: {sorted(found - listed)}"
