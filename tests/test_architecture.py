"""The import rules of docs/architecture.md, checked on the source and on a running serving process.

1. Front ends (`label_studio/`, `fiftyone_adapter/`, `fiftyone_plugin/`) use the core through its public API:
   top-level core modules and package roots (`tinysam_backend.everything`, not `.everything.generator`), no
   private (`_name`) imports; and neither front end imports the other.
2. The core never imports a front end.
3. The serving path (Label Studio app, gunicorn worker, CLI, predictor, a loaded model answering a click) never
   imports training, calibration or FiftyOne code.
4. Configuration enters at one point: only the settings modules, the allocator's re-exec and the CLI
   entry points that hand settings to child processes read `os.environ`.
5. Nothing heavy at import: `import tinysam_backend` and the front-end package roots load no torch.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tinysam_backend"
FRONT_ENDS = {"label_studio", "fiftyone_adapter"}
ENV_READERS = {  # where the environment may be read, and why
    "tinysam_backend/config.py": "Settings.from_env",
    "tinysam_backend/label_studio/settings.py": "LabelStudioSettings.from_env",
    "tinysam_backend/allocator.py": "decides the malloc re-exec before anything else runs",
    "tinysam_backend/label_studio/cli.py": "hands the settings to gunicorn's workers",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [a.name for a in node.names], node.lineno))
    return found


def _sources(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _part(module: str) -> str | None:
    """The top-level part of tinysam_backend a module belongs to (None outside the package)."""
    parts = module.split(".")
    if parts[0] != "tinysam_backend" or len(parts) < 2:
        return None
    return parts[1]


def _core_modules() -> set[str]:
    return {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists())) and p.stem != "__init__"
            and p.name not in FRONT_ENDS}


def test_front_ends_use_only_the_public_api_of_the_core():
    core = _core_modules()
    problems = []
    for path in _sources(PACKAGE / "label_studio", PACKAGE / "fiftyone_adapter", ROOT / "fiftyone_plugin"):
        own = _part(_module_name(path)) or "fiftyone_adapter"  # the plugin's operators call the FiftyOne adapter
        for module, names, line in _imports(path):
            part = _part(module)
            if part is None or part == own:
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if part in FRONT_ENDS:
                problems.append(f"{where}: a front end imports another front end")
            elif part in core and len(module.split(".")) > 2 and (PACKAGE / part).is_dir():
                problems.append(f"{where}: use the package root tinysam_backend.{part}, not its submodules")
            private = [n for n in names if n.startswith("_")]
            if private:
                problems.append(f"{where}: private names {private}")
    assert not problems, "\n".join(problems)


def test_the_core_never_imports_a_front_end():
    problems = []
    for path in _sources(PACKAGE):
        if _part(_module_name(path)) in FRONT_ENDS:
            continue
        for module, _names, line in _imports(path):
            if _part(module) in FRONT_ENDS or module.split(".")[0] in ("fiftyone", "flask", "fiftyone_plugin"):
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not problems, "\n".join(problems)


def test_only_the_settings_modules_read_the_environment():
    readers = []
    for path in _sources(PACKAGE, ROOT / "fiftyone_plugin"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.append(str(path.relative_to(ROOT)))
    unexpected = sorted(set(readers) - set(ENV_READERS))
    assert not unexpected, f"library code reads os.environ: {unexpected} (read it in config.py / settings.py)"
    assert set(readers) <= set(ENV_READERS)


# quantization/ modules that only `tinysam quantize` needs (the serving path reads artifacts with runtime.py)
CALIBRATION_MODULES = ("calibrate", "calibration_data", "recorder", "scale_search", "fake_quant", "artifact")


def test_calibration_modules_exist():
    """The forbidden list below names real modules (a rename must not empty it silently)."""
    missing = [m for m in CALIBRATION_MODULES if not (PACKAGE / "quantization" / f"{m}.py").is_file()]
    assert missing == []


SERVING_PROBE = r"""
import json, sys
from pathlib import Path
import numpy as np
from tinysam_backend.config import Settings
from tinysam_backend.label_studio.app import create_app
from tinysam_backend.label_studio.settings import LabelStudioSettings
import tinysam_backend.label_studio.gunicorn_conf, tinysam_backend.cli, tinysam_backend.everything
from tinysam_backend import load_model, Predictor
app = create_app(Settings(checkpoint=sys.argv[1]), LabelStudioSettings())
predictor = Predictor(load_model(sys.argv[1], engine="torch"))
emb = predictor.embed(np.zeros((64, 96, 3), np.uint8))
masks, scores, _ = predictor.predict(emb, point_coords=np.array([[10.0, 20.0]]), point_labels=np.array([1]))
print(json.dumps({"masks": list(masks.shape), "modules": sorted(sys.modules)}))
"""


def test_serving_path_never_imports_training_calibration_or_fiftyone(parity_checkpoint):
    proc = subprocess.run([sys.executable, "-c", SERVING_PROBE, str(parity_checkpoint)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["masks"] == [3, 64, 96]  # the probe really served a click
    modules = out["modules"]
    assert "tinysam_backend.label_studio.app" in modules and "tinysam_backend.predictor" in modules
    calibration = [f"tinysam_backend.quantization.{m}" for m in CALIBRATION_MODULES]
    forbidden = [m for m in modules if m.startswith(("tinysam_backend.distillation", "tinysam_backend.fiftyone_adapter",
                                                     *calibration, "fiftyone", "nncf"))]
    assert forbidden == []


@pytest.mark.parametrize("module", ["tinysam_backend", "tinysam_backend.label_studio",
                                    "tinysam_backend.fiftyone_adapter"])
def test_package_roots_import_nothing_heavy(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'fiftyone', 'flask', 'onnxruntime', " \
           "'openvino') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"
