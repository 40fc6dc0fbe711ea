"""What README.md and docs/ say about commands, files and modules is true.

Read from the Markdown itself: every ``dcsched ...`` command line in a code block or an
inline code span names commands that exist in the click CLI, with options each of them
takes; every repository path named (a link, or a code span or code line word under one of
the repository's folders) exists; every ``dcsched.x.y`` module named exists, and a name
after it (``dcsched.core.admission.plan``) is defined at its top level.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from prometheus_client import CollectorRegistry

from dcsched.cli import cli
from dcsched.serving.metrics import ReplicaMetrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        ROOT / "deploy" / "README.md",
        *(ROOT / "examples").glob("*/README.md"),
    ]
)
FOLDERS = ("scheduler", "plugins", "exporters", "deploy", "docs", "examples", "bench", "tests")
TOP_FILES = ("Makefile", "pyproject.toml", "README.md")


def code_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each code block line (continuations joined) and each inline
    code span of ``path`` (one may run over two lines; its line is where it starts)."""
    lines = path.read_text().splitlines()
    prose = list(lines)
    fenced = False
    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        prose[i] = ""
        if line.strip().startswith("```"):
            fenced = not fenced
        elif fenced:
            text = line.strip()
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                prose[i] = ""
                text = text[:-1] + " " + lines[i].strip()
            yield number, text
        else:
            prose[i] = line
        i += 1
    text = "\n".join(prose)
    for span in re.finditer(r"`((?:[^`\n]|\n(?!\s*\n))+)`", text):  # not over a blank line
        yield text.count("\n", 0, span.start()) + 1, " ".join(span.group(1).split())


def commands_of(path: Path) -> Iterator[tuple[int, str]]:
    for number, text in code_of(path):
        text = re.sub(r"^\$ ", "", text)
        if text.startswith("dcsched ") and not text.startswith("dcsched.io"):
            yield number, text


def words(command: str) -> list[str]:
    """The words of a documented command line up to its end (a comment, a redirection or
    a pipe to another program); optional parts in [brackets] kept, brackets dropped."""
    command = command.split(" # ")[0].split(" > ")[0]
    command = command.replace("[", " ").replace("]", " ")
    try:
        return shlex.split(command)
    except ValueError:  # an open quote in prose: the words before it
        return command.split()


def check_command(command: str) -> list[str]:
    """What is wrong with one documented command line (nothing: [])."""
    found: click.Command = cli
    path = ["dcsched"]
    args = words(command)[1:]
    problems: list[str] = []
    while args and isinstance(found, click.Group) and not args[0].startswith("-"):
        group = found
        with click.Context(group, info_name=" ".join(path)) as ctx:
            alternatives = re.split(r"[|/]", args[0])
            if len(alternatives) > 1:  # `serve list|status|...`: each one exists
                missing = [a for a in alternatives if group.get_command(ctx, a) is None]
                return [f"`{command}`: no command {a!r} in {' '.join(path)}" for a in missing]
            try:  # as the group resolves it (`dcsched serve MODEL` is `serve create MODEL`)
                name, sub, args = group.resolve_command(ctx, args)
            except click.UsageError:
                return [f"`{command}`: no command {args[0]!r} in {' '.join(path)}"]
        assert name is not None and sub is not None
        path.append(name)
        found = sub
    options = {o for p in found.params for o in [*p.opts, *p.secondary_opts]} | {"--help"}
    for arg in args:
        if arg == "--":
            break  # the rest is the user's command (`dcsched submit ... -- python x.py`)
        if arg.startswith("-") and arg not in {"-", "..."}:
            option = arg.split("=")[0]
            if option not in options:
                problems.append(f"`{command}`: `{' '.join(path)}` takes no option {option}")
    return problems


DOCUMENTED_COMMANDS = [
    pytest.param(text, id=f"{path.relative_to(ROOT)}:{number}")
    for path in DOCS
    for number, text in commands_of(path)
]


def test_the_docs_name_commands() -> None:
    assert len(DOCUMENTED_COMMANDS) > 100  # the extraction found them


@pytest.mark.parametrize("command", DOCUMENTED_COMMANDS)
def test_each_documented_command_exists_with_its_options(command: str) -> None:
    assert check_command(command) == []


@pytest.mark.parametrize(
    ("command", "wrong"),
    [
        ("dcsched lst", "no command 'lst'"),
        ("dcsched tokens create alice --teams research", "takes no option --teams"),
        ("dcsched list -o json --limt 5   # a comment --not-checked", "takes no option --limt"),
        ("dcsched serve list|status|rollback", "no command"),
    ],
)
def test_a_wrong_command_is_found(command: str, wrong: str) -> None:
    problems = check_command(command)
    assert problems and wrong in problems[0], problems


# -- paths and modules -------------------------------------------------------------------


def tree_listings(path: Path) -> dict[int, str]:
    """Line number -> the path its first word names, for the lines of each code block that
    is a tree listing (its first line a folder, ``deploy/``; indented entries below it)."""
    entries: dict[int, str] = {}
    lines = path.read_text().splitlines()
    for start, line in enumerate(lines):
        if line.strip() != "```" or start + 1 >= len(lines):
            continue
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)*/", lines[start + 1].strip()):
            continue
        stack: list[tuple[int, str]] = []
        for number in range(start + 3, len(lines) + 1):
            text = lines[number - 1]
            if text.strip().startswith("```"):
                break
            indent = len(text) - len(text.lstrip())
            while stack and stack[-1][0] >= indent:
                stack.pop()
            first = text.split()[0] if text.strip() else ""
            if not first:
                continue
            base = lines[start + 1].strip() + "".join(d for _, d in stack)
            entries[number] = base + first
            if first.endswith("/"):
                stack.append((indent, first))
    return entries


def paths_of(path: Path) -> Iterator[tuple[int, str]]:
    text = path.read_text()
    trees = tree_listings(path)
    for number, entry in trees.items():
        if not re.search(r"[<>{}*$]", entry):
            yield number, entry
    for link in re.finditer(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        target = link.group(1)
        if "://" not in target and not target.startswith("mailto:"):
            number = text.count("\n", 0, link.start()) + 1
            yield number, str((path.parent / target).resolve().relative_to(ROOT))
    for number, code in code_of(path):
        if number in trees:
            continue
        for word in re.split(r"[\s=,;()'\"]+", code):
            word = word.rstrip(".:")
            named = (word.split("/")[0] in FOLDERS and "/" in word) or word in TOP_FILES
            if named and not re.search(r"[<>{}*$]|\.\.\.|[A-Z]{2,}", word.split("/", 1)[-1]):
                yield number, word.split(":")[0]


DOCUMENTED_PATHS = sorted(
    {(path.relative_to(ROOT), number, target) for path in DOCS for number, target in paths_of(path)}
)


def test_the_docs_name_paths() -> None:
    assert len(DOCUMENTED_PATHS) > 50


def exists(doc: Path, target: str) -> bool:
    """A path exists from the repository's root or from the document's folder."""
    return (ROOT / target).exists() or (ROOT / doc).parent.joinpath(target).exists()


@pytest.mark.parametrize(("doc", "line", "target"), DOCUMENTED_PATHS)
def test_each_documented_path_exists(doc: Path, line: int, target: str) -> None:
    assert exists(doc, target), f"{doc}:{line} names {target}, which does not exist"


def modules_of(path: Path) -> Iterator[tuple[int, str]]:
    """``dcsched.X...`` where X is a module or package of dcsched (``dcsched.yaml``, the
    file, and ``dcsched.io/gpu-type``, the label, are not)."""
    spec = importlib.util.find_spec("dcsched")
    assert spec is not None and spec.origin is not None
    package = Path(spec.origin).parent
    top = {p.stem for p in package.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    top |= {"plugins", "exporters"}
    for number, code in code_of(path):
        for name in re.findall(r"\bdcsched(?:\.[A-Za-z_]\w*)+(?![\w/-])", code):
            if name.split(".")[1] in top:
                yield number, name


DOCUMENTED_NAMES = sorted(
    {(f"{path.relative_to(ROOT)}:{n}", name) for path in DOCS for n, name in modules_of(path)}
)


def resolve(dotted: str) -> str | None:
    """None if ``dotted`` names a module of dcsched, or a name defined at the top level of
    one (a function, class, constant or import); else what is missing."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            continue
        rest = parts[cut:]
        if not rest:
            return None
        if spec.origin is None or not spec.origin.endswith(".py"):
            return f"{module} has no file to read {rest[0]} from"
        tree = ast.parse(Path(spec.origin).read_text())
        defined = set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined |= {t.id for t in targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.Import | ast.ImportFrom):
                defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        return None if rest[0] in defined else f"{module} defines no {rest[0]}"
    return f"no module {dotted}"


def test_the_docs_name_modules() -> None:
    assert len(DOCUMENTED_NAMES) > 30


@pytest.mark.parametrize(("where", "name"), DOCUMENTED_NAMES)
def test_each_documented_module_and_name_exists(where: str, name: str) -> None:
    assert resolve(name) is None, f"{where}: {resolve(name)}"


def test_a_wrong_name_or_path_is_found() -> None:
    assert resolve("dcsched.core.admission.plan") is None
    assert resolve("dcsched.core.admission.plan_admissions") is not None
    assert resolve("dcsched.core.nonesuch") is not None
    assert exists(Path("README.md"), "docs/metrics.md")
    assert not exists(Path("README.md"), "docs/nonesuch.md")
    assert exists(Path("examples/plugin-template/README.md"), "tests/test_ridge.py")


# -- metrics -------------------------------------------------------------------------------


def metrics_table() -> dict[str, set[str]]:
    """name -> label names, from the tables of docs/metrics.md (the series the exporters'
    own tests check against what they serve)."""
    series = {}
    for row in re.finditer(r"(?m)^\| `(dcsched_\w+)` \| \w+ \|([^|]*)\|", METRICS.read_text()):
        labels = re.sub(r"\([^)]*\)", "", row.group(2))
        series[row.group(1)] = {w.strip() for w in labels.split(",") if w.strip()}
    return series


METRICS = ROOT / "docs" / "metrics.md"
NOT_SERIES = {"dcsched_ridge", "dcsched_kind"}  # the template's package, a Ray job's metadata
NAMED_SERIES = sorted(
    {
        (path.relative_to(ROOT), number, found.group(1), found.group(2) or "")
        for path in DOCS
        if path != METRICS
        for number, code in code_of(path)
        for found in re.finditer(r"\b(dcsched_[a-z_]+[a-z])(?:\{([^}]*)\})?", code)
        if found.group(1) not in NOT_SERIES
    }
)


@pytest.mark.parametrize(("doc", "line", "name", "labels"), NAMED_SERIES)
def test_each_series_named_in_the_docs_is_in_metrics_md(
    doc: Path, line: int, name: str, labels: str
) -> None:
    table = metrics_table()
    prefix = name.endswith("_") or name.endswith("_*")
    known = [n for n in table if n.startswith(name)] if prefix else [n for n in table if n == name]
    assert known, f"{doc}:{line} names {name}, which docs/metrics.md does not list"
    named = {w.split("=")[0].strip() for w in labels.split(",") if w.strip()}
    for series in known:
        assert named <= table[series], (
            f"{doc}:{line}: {series} has no label {named - table[series]}"
        )


def test_the_serving_table_is_what_a_replica_serves() -> None:
    registry = CollectorRegistry()
    ReplicaMetrics("bc", "bc-1", "m", 1, registry=registry)
    served = {
        family.name + ("_total" if family.type == "counter" else ""): set(
            next(iter(family.samples)).labels
        )
        - {"le"}
        for family in registry.collect()
    }
    section = METRICS.read_text().split("## Serving replicas", 1)[1].split("\n## ", 1)[0]
    documented = {
        name: labels for name, labels in metrics_table().items() if f"`{name}`" in section
    }
    assert documented == served


def test_the_architecture_lists_every_table_of_the_store() -> None:
    """docs/architecture.md's "Tables:" sentence names each table the SQLite store creates
    (schema_migrations is named just before it), and no other."""
    schema = (ROOT / "scheduler" / "adapters" / "sqlite_store.py").read_text()
    created = set(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", schema))
    text = (ROOT / "docs" / "architecture.md").read_text()
    sentence = text.split("Tables: ", 1)[1].split(". ", 1)[0]
    listed = set(re.findall(r"`(\w+)`", sentence)) | {"schema_migrations"}
    assert "schema_migrations" in text.split("Tables: ", 1)[0]
    assert listed == created
