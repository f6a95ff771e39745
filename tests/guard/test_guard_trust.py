"""A guard folder is data: loading it never imports or runs what it names (issue 17, item 1)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from hardened.cli.main import app
from hardened.errors import HardenedError, ModelLoadError
from hardened.guard import GuardedClassifier, make_score
from hardened.models import load_model, save_model

SENTINEL = "hardened_guard_sentinel_module"


@pytest.fixture(scope="module")
def energy(digits_model, digits):
    return make_score("energy", digits_model).fit(digits.train)


@pytest.fixture
def sentinel(tmp_path, monkeypatch):
    """A module in an importable folder whose import would leave a trace in ``sys.modules``."""
    (tmp_path / f"{SENTINEL}.py").write_text("import os\nos.environ['HARDENED_SENTINEL_RAN'] = '1'\ndef f():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARDENED_SENTINEL_RAN", raising=False)
    yield f"{SENTINEL}:f"
    sys.modules.pop(SENTINEL, None)


def _zoo_guard(digits_model, digits, digits_arch, energy, tmp_path) -> GuardedClassifier:
    path = save_model(digits_model, tmp_path / "lenet.safetensors", arch="lenet", arch_kwargs=digits_arch,
                      input_shape=(1, 8, 8), classes=digits.train.classes)
    loaded = load_model(path)
    guard = GuardedClassifier(loaded.model, energy, model_ref=str(path), model_info=loaded.info)
    guard.calibrate(digits.test.x[:150], fpr=0.05)
    return guard


def _set_reference(folder, reference, **classifier) -> None:
    record = json.loads((folder / "guard.json").read_text())
    record["classifier"] |= {"reference": reference, **classifier}
    (folder / "guard.json").write_text(json.dumps(record))


@pytest.mark.parametrize("reference", ["os:abort", "this:s", "sentinel", "model.pt"])
def test_a_named_factory_is_never_imported(digits_model, energy, digits, tmp_path, sentinel, reference):
    reference = sentinel if reference == "sentinel" else reference
    guard = GuardedClassifier(digits_model, energy, 1.0)  # not a zoo model: only a reference
    folder = guard.save(tmp_path / "g")
    _set_reference(folder, reference)
    before = set(sys.modules)
    with pytest.raises(ModelLoadError, match="never run from a guard folder.*trust_factory=True"):
        GuardedClassifier.load(folder)
    assert SENTINEL not in sys.modules and "this" not in set(sys.modules) - before
    assert "HARDENED_SENTINEL_RAN" not in __import__("os").environ


def test_a_zoo_guard_loads_without_code_whatever_its_reference_says(
        digits_model, digits, digits_arch, energy, tmp_path, sentinel):
    guard = _zoo_guard(digits_model, digits, digits_arch, energy, tmp_path)
    folder = guard.save(tmp_path / "g")
    assert {"classifier.safetensors", "classifier.json"} <= {p.name for p in folder.iterdir()}
    _set_reference(folder, sentinel)
    (tmp_path / "lenet.safetensors").unlink()  # the folder is self-contained
    loaded = GuardedClassifier.load(folder)
    assert SENTINEL not in sys.modules
    x = digits.test.x[:40]
    assert torch.equal(loaded.predict_batch(x).accepted, guard.predict_batch(x).accepted)
    assert torch.equal(loaded.predict_batch(x).predictions, guard.predict_batch(x).predictions)


def test_trust_factory_runs_the_reference_after_the_checks(digits_model, digits, digits_arch, energy,
                                                           tmp_path, monkeypatch):
    module = "hardened_guard_trusted_factory"
    (tmp_path / f"{module}.py").write_text(
        "from hardened.models import build_model\n"
        f"ARCH = {digits_arch!r}\n"
        "def build():\n    return build_model('lenet', **ARCH)\n"
        "def other():\n    return build_model('lenet', **(ARCH | {'hidden': 7}))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    guard = GuardedClassifier(digits_model, energy, 1.0, model_ref=f"{module}:build")
    folder = guard.save(tmp_path / "g")
    # the score file is checked before any import
    (folder / "score.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ModelLoadError, match="corrupt"):
        GuardedClassifier.load(folder, trust_factory=True)
    assert module not in sys.modules
    folder = guard.save(tmp_path / "g")
    record = json.loads((folder / "guard.json").read_text())
    (folder / "guard.json").write_text(json.dumps(record | {"classifier": record["classifier"] | {"fingerprint": "0" * 64}}))
    with pytest.raises(ModelLoadError, match="does not match the fingerprint"):
        GuardedClassifier.load(folder, trust_factory=True)
    assert module not in sys.modules  # the stored weights are checked before the import
    folder = guard.save(tmp_path / "g")
    loaded = GuardedClassifier.load(folder, trust_factory=True)  # stored weights, fingerprint checked
    x = digits.test.x[:20]
    assert torch.equal(loaded.predict_batch(x).predictions, guard.predict_batch(x).predictions)
    _set_reference(folder, f"{module}:other")
    with pytest.raises(ModelLoadError, match="does not fit the classifier"):
        GuardedClassifier.load(folder, trust_factory=True)
    sys.modules.pop(module, None)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("threshold", "abc", "'threshold' must be"),
        ("threshold", True, "'threshold' must be"),
        ("input_shape", "abc", "'input_shape' must be"),
        ("input_shape", [1, 8, 10**9], "'input_shape' must be"),
        ("score", [], "no score record"),
        ("classes", "0123", "'classes' must be"),
        ("calibration", {"threshold": 1}, "calibration record"),
        ("classifier", "os:abort", "'classifier' must be"),
        ("format_version", 3, "newer hardened"),
        ("extra", [], "'extra' must be"),
    ],
)
def test_malformed_guard_records_are_one_clear_error(digits_model, energy, tmp_path, field, value, message):
    folder = GuardedClassifier(digits_model, energy, 1.0).save(tmp_path / "g")
    record = json.loads((folder / "guard.json").read_text())
    record[field] = value
    (folder / "guard.json").write_text(json.dumps(record))
    with pytest.raises(HardenedError, match=message):
        GuardedClassifier.load(folder, digits_model)


def test_the_classifier_file_must_lie_inside_the_folder(digits_model, energy, tmp_path):
    folder = GuardedClassifier(digits_model, energy, 1.0).save(tmp_path / "g")
    _set_reference(folder, None, file="../../elsewhere.safetensors", arch="lenet")
    with pytest.raises(ModelLoadError, match="'file' must be"):
        GuardedClassifier.load(folder)


def test_cli_refuses_a_factory_guard_without_the_flag(digits_model, energy, tmp_path, sentinel):
    folder = GuardedClassifier(digits_model, energy, 1.0).save(tmp_path / "g")
    _set_reference(folder, sentinel)
    image = tmp_path / "x.npz"
    import numpy as np

    np.savez(image, x=np.zeros((1, 1, 8, 8), dtype=np.float32))
    result = CliRunner().invoke(app, ["guard", "predict", str(image), "--guard", str(folder)])
    assert result.exit_code == 2, result.output
    assert "--trust-factory" in result.output and "Traceback" not in result.output
    assert SENTINEL not in sys.modules
    result = CliRunner().invoke(app, ["guard", "predict", str(image), "--guard", str(folder), "--trust-factory"])
    assert SENTINEL in sys.modules  # the user asked for it: the factory ran (and failed: not an nn.Module)
    assert result.exit_code == 2 and "not an nn.Module" in result.output


def test_a_guard_written_before_the_classifier_was_stored_still_loads_its_weights_file(
        digits_model, digits, digits_arch, energy, tmp_path):
    guard = _zoo_guard(digits_model, digits, digits_arch, energy, tmp_path)
    folder = guard.save(tmp_path / "g")
    for name in ("classifier.safetensors", "classifier.json"):
        (folder / name).unlink()
    _set_reference(folder, str(tmp_path / "lenet.safetensors"), file=None, arch=None)
    loaded = GuardedClassifier.load(folder)  # weights + sidecar: data, no trust needed
    assert loaded.threshold == guard.threshold


def test_python_m_in_a_folder_with_the_named_module_does_not_run_it(digits_model, energy, tmp_path):
    """The issue's reproducer: ``python -m hardened.cli.main`` puts the cwd on sys.path."""
    import os
    import subprocess

    import numpy as np

    import hardened

    (tmp_path / "evil_guard_module.py").write_text("open('RAN', 'w').write('x')\ndef f():\n    return None\n")
    folder = GuardedClassifier(digits_model, energy, 1.0).save(tmp_path / "g")
    _set_reference(folder, "evil_guard_module:f")
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 1, 8, 8), dtype=np.float32))
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(hardened.__file__))}
    result = subprocess.run([sys.executable, "-m", "hardened.cli.main", "guard", "predict", "x.npz", "--guard", "g"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--trust-factory" in result.stderr + result.stdout
    assert not (tmp_path / "RAN").exists()
