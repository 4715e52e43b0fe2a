"""The package layering: data -> models / index -> retrieval -> eval -> train, with `parallel` a
leaf and the top-level helper modules (hsnn_jax/*.py) importing no package. No module imports a
higher layer, and no two modules import each other, directly or through others."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "hsnn_jax"
LAYER = {"data": 0, "models": 1, "index": 1, "retrieval": 2, "eval": 3, "train": 4}
LEAVES = {"parallel", "(top)"}  # import no other part of hsnn_jax


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package(module: str) -> str:
  """The sub-package a module belongs to (its __init__ included), or '(top)'."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 and (ROOT / parts[1]).is_dir() else "(top)"


def import_graph() -> dict:
  """module -> the hsnn_jax modules it imports (anywhere in the file, TYPE_CHECKING included)."""
  modules = {module_name(p): p for p in ROOT.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        candidates = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        candidates = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
      else:
        continue
      targets |= {c for c in candidates if c in modules and c != name}
    graph[name] = targets
  return graph


def upward_imports(graph: dict) -> list:
  bad = []
  for source, targets in graph.items():
    for target in targets:
      a, b = package(source), package(target)
      if a == b or target == "hsnn_jax":
        continue
      if a in LEAVES or (b not in LEAVES and LAYER[b] > LAYER[a]):
        bad.append(f"{source} -> {target}")
  return sorted(bad)


def cycles(graph: dict) -> list:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_every_package_has_a_layer():
  packages = {package(m) for m in import_graph()}
  assert packages <= set(LAYER) | LEAVES, packages


def test_no_module_imports_a_higher_layer():
  assert upward_imports(import_graph()) == []


def test_no_import_cycles():
  assert cycles(import_graph()) == []


@pytest.mark.parametrize("graph, want", [
    ({"hsnn_jax.retrieval.a": {"hsnn_jax.eval.b"}}, ["hsnn_jax.retrieval.a -> hsnn_jax.eval.b"]),
    ({"hsnn_jax.parallel.a": {"hsnn_jax.data.b"}}, ["hsnn_jax.parallel.a -> hsnn_jax.data.b"]),
    ({"hsnn_jax.chunking": {"hsnn_jax.data.b"}}, ["hsnn_jax.chunking -> hsnn_jax.data.b"]),
    ({"hsnn_jax.train.a": {"hsnn_jax.parallel.b", "hsnn_jax.data.c", "hsnn_jax.chunking"}}, []),
])
def test_the_checker_catches_upward_imports(graph, want):
  assert upward_imports(graph) == want


def test_the_checker_catches_cycles():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert cycles(graph) == [["a", "b", "c"]]
