"""Size counts of the tree (docs/architecture.md, "Size rules"): constructor parameters of the main
classes, files over 350 lines, functions over 60 lines.

    python scripts/tree_stats.py [REPO_ROOT]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

CLASSES = ("ViTPModule", "PointViT", "NativeProposer", "TwoStagePipeline")


def main(root: Path) -> None:
    long_functions, files, params = [], [], {}
    for path in sorted((root / "src").rglob("*.py")):
        text = path.read_text()
        files.append((text.count("\n"), str(path.relative_to(root))))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long_functions.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.name}"))
            if isinstance(node, ast.ClassDef) and node.name in CLASSES:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        params[node.name] = len(item.args.args) - 1 + len(item.args.kwonlyargs)
    print("constructor parameters:", ", ".join(f"{k} {v}" for k, v in sorted(params.items())))
    print("files over 350 lines:", [f"{p} ({n})" for n, p in sorted(files, reverse=True) if n > 350] or "none")
    print("largest files:", ", ".join(f"{p} ({n})" for n, p in sorted(files, reverse=True)[:4]))
    print("functions over 60 lines:", ", ".join(f"{name} ({n})" for n, name in sorted(long_functions, reverse=True)) or "none")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
