"""The repository's own facts: every path named in a comment, a docstring, the README or
docs/ exists, and every link between them resolves; the README's layout table is the
tree; no module edits sys.path, no two modules import each other and each room imports
only what lies below it; pyproject.toml builds the project with requirements.txt's
pins."""

import ast
import re
import shutil
import subprocess
import sys
import zipfile

from app.config import PROJECT_ROOT

FOLDERS = (
    ".ci",
    "apache",
    "app",
    "docs",
    "models",
    "prometheus",
    "provisioning",
    "reports",
    "scripts",
    "stress",
    "systemd",
    "tests",
    "tools",
    "wsgi",
)
PACKAGES = ("app", "provisioning", "scripts", "stress", "tools")
# A relative path into the repository: one of its folders, a slash, a name; not the tail of
# a longer path (/opt/beagle/current/scripts/...) nor a placeholder (models/<name>/).
FOLDER = "|".join(map(re.escape, FOLDERS))
PATH = re.compile(  # or a document at the root
    rf"(?<![\w/.~{{}}$-])((?:{FOLDER})/[\w.@/-]*[\w@]|[A-Z][\w-]*\.md)\b"
)
SOURCES = ("*.py", "*.j2", "*.sh", "Makefile", "*.toml", ".ci/run")


def tracked(*patterns):
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [PROJECT_ROOT / name for name in listed]


def comments_of(path):
    """The comments and docstrings of a source file; a Python file's strings that are
    statements (docstrings), other files' lines starting with #."""
    text = path.read_text()
    if path.suffix != ".py":
        return [line for line in text.splitlines() if line.lstrip().startswith("#")]
    found = [
        line
        for line in text.splitlines()
        if "#" in line and line.lstrip().startswith("#") or "  # " in line
    ]
    for node in ast.walk(ast.parse(text)):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            found.append(node.value.value)
    return found


def documents():
    """The README and every document in docs/."""
    return [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def test_every_path_named_in_a_comment_the_readme_or_the_docs_exists():
    named = {(doc.name, match) for doc in documents() for match in PATH.findall(doc.read_text())}
    for path in tracked(*SOURCES):
        for text in comments_of(path):
            named |= {(str(path.relative_to(PROJECT_ROOT)), match) for match in PATH.findall(text)}
    missing = sorted((where, name) for where, name in named if not (PROJECT_ROOT / name).exists())
    print(f"\n{len(named)} repository paths named in comments, docstrings, README and docs")
    assert len(named) > 50 and missing == []


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(document):
    """The anchors GitHub makes of a Markdown file's headings."""
    found = set()
    for heading in re.findall(r"^#+ (.*)$", document.read_text(), re.M):
        text = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading).strip().lower()
        found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


def test_every_relative_link_in_the_readme_and_the_docs_resolves():
    broken, count = [], 0
    for doc in documents():
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not ours to check
            count += 1
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                broken.append((doc.name, target))
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append((doc.name, target))
    print(f"\n{count} relative links in README.md and docs/")
    assert count > 20 and broken == []


def test_the_readme_layout_table_is_the_tree():
    readme = (PROJECT_ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([\w.]+)/` \| (.*) \|$", readme.split("## Layout")[1], re.M))
    assert set(rows) == set(FOLDERS)
    for package in PACKAGES:
        files = list((PROJECT_ROOT / package).rglob("*"))
        modules = {p.stem for p in files if p.suffix == ".py"} - {"__init__", "__main__"}
        named = set(re.findall(r"`([\w.@-]+)/?`", rows[package]))
        assert modules <= named, (package, modules - named)
        stems = {p.stem for p in files} | {p.name for p in files}
        assert all(n in stems for n in named if n not in ("make", "fab")), (package, named)


def imports_of(path):
    """The modules of this repository that ``path`` imports, by name ("app.queue")."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.split(".")[0] in PACKAGES}


def module_files():
    """{module name ("app.web.api"): its file}, for every module of the packages."""
    return {
        ".".join(p.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for package in PACKAGES
        for p in (PROJECT_ROOT / package).rglob("*.py")
    }


def module_graph():
    """{module: the repository's modules it imports}."""
    modules = module_files()
    return {name: imports_of(path) & set(modules) for name, path in modules.items()}


def test_no_module_edits_sys_path_and_no_two_import_each_other():
    graph = module_graph()
    both_ways = sorted(
        {
            tuple(sorted((a, b)))
            for a, imported in graph.items()
            for b in imported
            if a != b and a in graph.get(b, ())
        }
    )
    assert both_ways == []
    editing = [name for name, path in module_files().items() if "sys.path" in path.read_text()]
    editing += [
        p.name
        for p in (PROJECT_ROOT / "tests").glob("*.py")
        if "sys.path.insert" in p.read_text() and p.name != "test_project.py"
    ]
    assert editing == []


def test_each_room_imports_only_what_lies_below_it():
    """app/'s shared modules import neither tier; the web tier never imports the worker's
    code (so it never loads TensorFlow) nor the worker the web's; nothing served imports
    the deploy, the tools or the scripts; scripts/ is commands, never imported."""
    rules = {
        "app.web": ("app.worker", "provisioning", "tools", "scripts", "stress"),
        "app.worker": ("app.web", "provisioning", "tools", "scripts", "stress"),
        "app": ("app.web", "app.worker", "provisioning", "tools", "scripts", "stress"),
        "provisioning": ("tools", "scripts", "stress"),
        "tools": ("scripts", "stress"),
        "stress": ("scripts",),
    }
    broken = []
    for module, imported in module_graph().items():
        room = next((r for r in rules if module == r or module.startswith(r + ".")), None)
        for name in imported:
            if room and any(name == f or name.startswith(f + ".") for f in rules[room]):
                broken.append((module, name))
    assert broken == []


def test_the_project_builds_with_the_pinned_requirements(tmp_path):
    source = tmp_path / "source"  # a copy: a build writes into the tree it builds
    for path in tracked("pyproject.toml", "requirements.txt", "README.md", *PACKAGES):
        (source / path.relative_to(PROJECT_ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, source / path.relative_to(PROJECT_ROOT))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("beagle-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
    for module in (
        "app/worker/loop.py",
        "tools/devstack.py",
        "provisioning/host.py",
        "scripts/flush_queue.py",
        "stress/stress_test.py",
    ):
        assert module in names
    assert not any(name.startswith("tests/") for name in names)
    assert "Requires-Dist: tensorflow==2.21.0" in metadata
