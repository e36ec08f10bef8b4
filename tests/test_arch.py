"""The architecture registry (``rcnn.arch``): every architecture-specific choice is read from it.

--arch's choices and help, the per-architecture detection defaults, the errors naming the registered
set, and the rule that no code outside ``rcnn/arch/`` compares an architecture's name.
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rcnn.arch import ARCHS, DEFAULT_ARCH, ArchSpec, arch_for_input, get_arch, load
from rcnn.cli import main
from rcnn.detect import DetectConfig

ROOT = Path(__file__).resolve().parents[1]


def help_text(*command: str) -> str:
    res = CliRunner().invoke(main, [*command, "--help"], terminal_width=10_000, max_content_width=10_000)
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def test_importing_the_registry_imports_no_torch():
    code = "import sys, rcnn.arch; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_every_part_a_spec_names_exists():
    assert list(ARCHS) == ["fast", "rcnn", "faster"] and DEFAULT_ARCH in ARCHS
    refs = ("settings", "trainer", "network", "check_config", "scorer", "graph")
    for name, spec in ARCHS.items():
        assert spec.name == name and spec.input in ("regions", "parsed")
        for ref in refs:
            assert load(getattr(spec, ref)) is not None, (name, ref)
        assert dataclasses.is_dataclass(spec.settings_class())
        assert set(spec.stages) <= {"propose", "crop"}


def test_arch_choices_and_help_come_from_the_registry(monkeypatch):
    for command in ("train", "pipeline"):
        assert "--arch [fast|rcnn|faster]" in help_text(command)
    for name, spec in ARCHS.items():  # each entry's own words
        assert f"{name}: {spec.summary}" in help_text("train") and f"{name}: {spec.title}" in help_text("pipeline")
    # a registered architecture is a choice at once
    monkeypatch.setitem(ARCHS, "tiny", dataclasses.replace(ARCHS["fast"], name="tiny"))
    assert "--arch [fast|rcnn|faster|tiny]" in help_text("train") and "--arch [fast|rcnn|faster|tiny]" in help_text("pipeline")


def test_train_arch_default_follows_the_input_kind():
    assert DEFAULT_ARCH == "faster"
    assert arch_for_input(False) is ARCHS["faster"] and arch_for_input(True) is ARCHS["rcnn"]
    # stored proposals: the default finds its own, so the first registered one that takes them
    assert arch_for_input(False, proposals=True) is ARCHS["fast"]
    assert " ".join(help_text("train").split()).count(
        "[default: faster for a file, fast for a file with --proposals, rcnn for a folder]") == 1


def test_an_unknown_arch_is_a_one_line_error_naming_the_registered_ones(tmp_path):
    with pytest.raises(ValueError, match=r"'arch=nope' is unknown; valid architectures are fast, rcnn, faster$"):
        get_arch("nope")
    from rcnn.pipeline import PipelineConfig

    with pytest.raises(ValueError, match="valid architectures are fast, rcnn, faster"):
        PipelineConfig(arch="nope")
    for command in (["train", str(tmp_path), "--out", str(tmp_path / "m")], ["pipeline", str(tmp_path), "--out", str(tmp_path / "r")]):
        res = CliRunner().invoke(main, [*command, "--arch", "nope"])
        assert res.exit_code == 2 and "Traceback" not in res.output
        assert "'nope' is not one of 'fast', 'rcnn'" in res.output, res.output


def test_a_model_folder_of_an_unknown_arch_is_refused(tmp_path):
    from rcnn.model import ModelConfig

    with pytest.raises(ValueError, match="'arch='nope'' is unknown; this version reads fast, rcnn, faster models"):
        ModelConfig(["background", "cat"], "efficientnet_lite0", 64, (0.5,) * 3, (0.2,) * 3, arch="nope")


@pytest.mark.parametrize("name", list(ARCHS))
def test_detection_defaults_are_the_specs(name: str, monkeypatch):
    spec = ARCHS[name]
    assert f"{name} {spec.score_threshold}" in help_text("detect") and f"{name} {spec.scored_proposals}" in help_text("detect")
    resolved = DetectConfig().resolved(name)
    assert resolved.threshold == spec.score_threshold and resolved.score_proposals == spec.scored_proposals
    assert resolved.forward_batch == spec.forward_batch  # 0: auto (4 on a CPU, 64 on a GPU)
    assert DetectConfig().proposals_for(name) == spec.scored_proposals
    # the values given win, and the registry is read each time (change the spec: the defaults follow)
    assert DetectConfig(threshold=0.9, score_proposals=7).resolved(name).threshold == 0.9
    monkeypatch.setitem(ARCHS, name, dataclasses.replace(spec, score_threshold=0.77, scored_proposals=33, forward_batch=5))
    resolved = DetectConfig().resolved(name)
    assert (resolved.threshold, resolved.score_proposals, resolved.forward_batch) == (0.77, 33, 5)


def test_the_measured_detection_defaults():
    """The numbers the README's measurements chose (a change here is a change of results)."""
    assert (ARCHS["rcnn"].score_threshold, ARCHS["rcnn"].scored_proposals) == (0.3, 500)
    assert (ARCHS["fast"].score_threshold, ARCHS["fast"].scored_proposals) == (0.05, 2000)


def arch_name_comparisons(source: str, where: str) -> list[str]:
    """``x == "fast"``, ``"rcnn" != y``, ``arch in ("rcnn", "fast")`` ... in ``source``: where code compares a name."""
    names = set(ARCHS)
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        sides += [e for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts]
        if any(isinstance(s, ast.Constant) and s.value in names for s in sides):
            found.append(f"{where}:{node.lineno}")
    return found


def test_no_code_outside_the_registry_compares_an_architecture_name():
    outside = [p for p in (ROOT / "rcnn").rglob("*.py") if (ROOT / "rcnn" / "arch") not in p.parents]
    # rcnn.propose's selective-search *mode* "fast" is another word that happens to be spelled the same
    found = [f for p in outside if p.name != "propose.py" for f in arch_name_comparisons(p.read_text(), p.name)]
    assert found == []
    # the check can fail
    bad = 'if model.arch == "fast":\n    pass\nok = arch in ("rcnn", "x")\nfine = mode == "quality"\n'
    assert arch_name_comparisons(bad, "bad.py") == ["bad.py:1", "bad.py:3"]


def test_input_size_says_what_it_is_per_architecture():
    from rcnn.model import ModelConfig

    common = dict(classes=["background", "cat"], backbone="efficientnet_lite0", input_size=224, mean=(0.5,) * 3,
                  std=(0.2,) * 3)
    classic = ModelConfig(**common)  # config.json without "arch": a classic model, as folders were first written
    fast = ModelConfig(**common, arch="fast", max_size=800, frozen_stages=3, roi_size=7, fine_features=True)
    assert (classic.arch, classic.crop_side, classic.short_side) == ("rcnn", 224, None)
    assert (fast.crop_side, fast.short_side) == (None, 224)
    with pytest.raises(ValueError, match="invalid for a fast model"):  # the arch's own checks (ArchSpec.check_config)
        ModelConfig(**common, arch="fast", max_size=100, frozen_stages=3, roi_size=7)
