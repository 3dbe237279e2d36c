"""core/ is a library in layers (DESIGN.md section 6): every module imports only from its own layer or the
layers before it, and no modules import each other in a circle. Read from the source (AST), so an import
inside a function counts as much as one at the top; imports under ``if TYPE_CHECKING:`` do not."""
import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"
LAYERS = ["foundation", "data", "models", "transport", "quantize", "training", "pipeline", "evaluation", "studio",
          "cli"]
FOUNDATION = {"core", "core.errors", "core.config", "core.reads", "core.io", "core.device", "core.registry"}


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    if module in FOUNDATION:
        return 0
    if module == "core.__main__":
        return LAYERS.index("cli")
    return LAYERS.index(module.split(".")[1])


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def core_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from core.x import y`` counts as core.x.y when that is a module)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "core")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "core":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in CORE.rglob("*.py")}
    return {m: {i for i in core_imports(p, set(files)) if i in files} for m, p in files.items()}


def test_every_module_belongs_to_a_layer():
    for module in graph():
        layer_of(module)


def test_no_module_imports_a_later_layer():
    wrong = [f"{m} ({LAYERS[layer_of(m)]}) imports {i} ({LAYERS[layer_of(i)]})"
             for m, imports in graph().items() for i in sorted(imports) if layer_of(i) > layer_of(m)]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    edges = {m: {i for i in imports if i != "core"} for m, imports in graph().items()}
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for i in sorted(edges[m]):
            if state.get(i) == "open":
                cycles.append(" -> ".join(stack[stack.index(i):] + [i]))
            elif i not in state:
                visit(i, stack + [i])
        state[m] = "done"
    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)
