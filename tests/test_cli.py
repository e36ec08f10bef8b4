"""The command line is a thin layer: every default lives in the library, once.

No model is trained here: the library functions are replaced by recorders, so these tests
check what the CLI builds and passes on, in a second.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner

import rcnn.cli
from rcnn.cli import LibraryOption, main, resolve
from rcnn.crop import CropConfig
from rcnn.detect import DetectConfig
from rcnn.errors import DataError
from rcnn.pipeline import PipelineConfig
from rcnn.propose import ProposeConfig
from rcnn.train import TrainConfig
from rcnn.fast import FastConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = (ProposeConfig, CropConfig, TrainConfig, FastConfig, DetectConfig, PipelineConfig)


def source_default(source: Any, name: str) -> Any:
    """The default of dataclass field ``name``, or of function parameter ``name``, read independently of the CLI."""
    if dataclasses.is_dataclass(source):
        (f,) = [f for f in dataclasses.fields(source) if f.name == name]
        return f.default_factory() if f.default is dataclasses.MISSING else f.default
    return inspect.signature(source).parameters[name].default


def all_options() -> list[tuple[str, click.Option]]:
    return [(name, p) for name, cmd in main.commands.items() for p in cmd.params if isinstance(p, click.Option)]


def help_text(command: str) -> str:
    res = CliRunner().invoke(main, [command, "--help"], terminal_width=10_000, max_content_width=10_000)
    assert res.exit_code == 0, res.output
    return res.output


def help_entry(command: str, option: str) -> str:
    """The --help text of one option, its lines joined (a long name puts its help on the next line)."""
    lines = help_text(command).splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"  {option}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("  -")), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def default_text_oracle(command: str, p: LibraryOption) -> str:
    """What --help must say for an option whose library default is "not set" (None), read from the library:
    the registry's per-architecture values, the model's own selective-search settings, all classes, no Ray."""
    from rcnn.arch import ARCHS

    if p.source == "detect:DetectConfig" and p.name == "threshold":
        assert DetectConfig().threshold is None  # None: each architecture's own
        return "by architecture: " + ", ".join(f"{name} {spec.score_threshold}" for name, spec in ARCHS.items())
    if p.source == "propose:ProposeConfig" and command == "detect":
        assert DetectConfig().propose is None  # None: the settings the model was trained with
        return "as the model was trained"
    if p.source == "detect:DetectConfig" and p.name in ("nms_iou", "vote_iou"):
        from rcnn.postprocess import PostProcess

        assert getattr(DetectConfig(), p.name) is None  # None: the model's, fitted on its hold-out images
        old = PostProcess().nms_iou if p.name == "nms_iou" else PostProcess().vote_iou  # a model folder without them
        return f"the model's, fitted on its hold-out images; {old} for older models"
    if p.name == "keep_classes":
        assert DetectConfig().keep_classes is None  # None: every class
        return "all"
    if p.name == "ray":
        assert source_default(resolve(p.source), "ray") is None  # None: no Ray
        return "no Ray"
    raise AssertionError(f"{command} {p.opts[0]} says its default in words nobody checks: {p.default_text!r}")


def test_every_help_default_is_the_library_default():
    checked = 0
    for command, p in all_options():
        if not isinstance(p, LibraryOption):
            continue
        default = source_default(resolve(p.source), p.name)
        line = help_entry(command, p.opts[0])
        if p.is_flag and not p.secondary_opts:  # a one-sided flag: giving it changes the default
            assert p.flag_activation_value != default, (command, p.opts)
            assert p.show_default is False and "[default:" not in line, (command, line)
        elif p.default_text:  # a default that is not one value: what the library does instead, said independently
            text = default_text_oracle(command, p)
            assert p.show_default == text, (command, p.opts, p.show_default, text)
            assert f"[default: {text}" in line, (command, line)
        else:  # --freeze-backbone/--fine-tune: the side that is the default
            text = (p.opts if default else p.secondary_opts)[0].lstrip("-") if p.is_flag else str(default)
            if p.also and source_default(resolve(p.also[1]), p.name) != default:  # Fast R-CNN's default, where it differs
                other = source_default(resolve(p.also[1]), p.name)
                text += f"; {p.also[0]}: " + ((p.opts if other else p.secondary_opts)[0].lstrip("-") if p.is_flag else str(other))
            assert p.show_default == text, (command, p.opts, p.show_default, default)
            assert f"[default: {text}" in line, (command, line)
        assert p.default is None  # the CLI passes on only what the user set
        checked += 1
    assert checked >= 60


def test_no_option_writes_its_own_default_for_a_library_setting():
    """A plain option whose name is a settings field would be a second copy of that default."""
    fields = {f.name for cls in CONFIGS for f in dataclasses.fields(cls)}
    for command, p in all_options():
        if not isinstance(p, LibraryOption) and p.name not in ("help", "batch_size", "classes"):
            # train's --arch has no fixed default: it follows the input (a parsed file: fast, a crops folder: rcnn)
            assert p.name not in fields or (command, p.name) == ("train", "arch"), (command, p.opts)
    # the few plain options left keep CLI-only defaults (folders, splits, output formats)
    no_default = (None, False, getattr(click.core, "UNSET", None))  # Click 8.3+ marks "no default" with UNSET
    plain = {(c, p.name) for c, p in all_options() if not isinstance(p, LibraryOption) and p.default not in no_default}
    assert plain <= {("propose", "split"), ("crop", "split"), ("crop", "fmt"), ("detect", "name"),
                     ("evaluate", "split"), ("demo", "out"), ("export", "fmt"), ("report", "split")}, plain


def test_backbone_choices_come_from_the_registry(monkeypatch, tmp_path):
    from rcnn import backbones

    monkeypatch.setitem(backbones.BACKBONES, "tiny_test_net", lambda weights: None)
    assert "tiny_test_net" in help_text("train") and "tiny_test_net" in help_text("pipeline")
    seen = record(monkeypatch, "rcnn.arch.rcnn.train", "fit", {})  # the registry's trainer of --arch rcnn
    monkeypatch.setattr("rcnn.engine.format_report", lambda r: "")
    res = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "m"), "--backbone", "tiny_test_net"])
    assert res.exit_code == 0, res.output
    assert seen["args"][2].backbone == "tiny_test_net"
    res = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "m"), "--backbone", "resnet9000"])
    assert res.exit_code == 2 and "resnet9000" in res.output


# --------------------------------------------------------------------------- what each command passes on


def record(monkeypatch: pytest.MonkeyPatch, module: str, name: str, result: Any = None,
           raises: Exception | None = None) -> dict[str, Any]:
    """Replace ``module.name`` with a recorder of its arguments; returns the record."""
    seen: dict[str, Any] = {}

    def fake(*args: Any, **kwargs: Any) -> Any:
        seen.update(args=args, kwargs=kwargs)
        if raises is not None:
            raise raises
        return result

    original = getattr(importlib.import_module(module), name)
    monkeypatch.setattr(f"{module}.{name}", functools.wraps(original)(fake))  # same signature, same defaults
    return seen


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    parsed = tmp_path / "parsed.json"
    parsed.write_text("{}")
    folder = tmp_path / "folder"
    folder.mkdir()
    monkeypatch.setattr("rcnn.parse.Dataset.load", lambda path: "dataset")
    return SimpleNamespace(parsed=str(parsed), folder=str(folder), out=str(tmp_path / "out"))


def invoke(*args: str, code: int = 0) -> str:
    res = CliRunner().invoke(main, list(args))
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    return res.output


REPORT = SimpleNamespace(map50=0.5, map50_95=0.2, n_test_images=3)


def test_propose_crop_train_without_options_use_the_dataclass_defaults(monkeypatch, paths):
    seen = record(monkeypatch, "rcnn.propose", "propose_dataset", {})
    monkeypatch.setattr("rcnn.propose.format_report", lambda r: "")
    invoke("propose", paths.parsed, "--out", paths.out)
    assert seen["args"][2] == ProposeConfig() and "workers" not in seen["kwargs"] and seen["kwargs"]["split"] == "all"

    seen = record(monkeypatch, "rcnn.crop", "crop_dataset", {})
    monkeypatch.setattr("rcnn.crop.format_report", lambda r: "")
    invoke("crop", paths.parsed, paths.folder, "--out", paths.out)
    assert seen["args"][3] == CropConfig() and seen["kwargs"]["split"] == "train"

    seen = record(monkeypatch, "rcnn.arch.rcnn.train", "fit", {})  # the registry's trainer of --arch rcnn
    monkeypatch.setattr("rcnn.engine.format_report", lambda r: "")
    invoke("train", paths.folder, "--out", paths.out)
    assert seen["args"][2] == TrainConfig() and {k: v for k, v in seen["kwargs"].items() if k != "echo"} == {
        "proposals": None, "resume": False}
    assert TrainConfig().backbone == PipelineConfig().train.backbone == "efficientnet_lite0"


def test_options_reach_their_fields(monkeypatch, paths):
    seen = record(monkeypatch, "rcnn.arch.rcnn.train", "fit", {})  # the registry's trainer of --arch rcnn
    monkeypatch.setattr("rcnn.engine.format_report", lambda r: "")
    invoke("train", paths.folder, "--out", paths.out, "--hflip", "--fine-tune", "--batch-size", "32", "--lr", "0.01")
    assert seen["args"][2] == TrainConfig(hflip=True, freeze_backbone=False, batch_size=32, lr=0.01)

    seen = record(monkeypatch, "rcnn.crop", "crop_dataset", {})
    monkeypatch.setattr("rcnn.crop.format_report", lambda r: "")
    invoke("crop", paths.parsed, paths.folder, "--out", paths.out, "--no-gt", "--size", "64", "--context", "4")
    assert seen["args"][3] == CropConfig(include_gt=False, size=64, context=4)

    seen = record(monkeypatch, "rcnn.propose", "propose_dataset", {})
    monkeypatch.setattr("rcnn.propose.format_report", lambda r: "")
    invoke("propose", paths.parsed, "--out", paths.out, "--mode", "quality", "--max-side", "0", "--workers", "1", "--seed", "4")
    assert seen["args"][2] == ProposeConfig(mode="quality", max_side=0, seed=4) and seen["kwargs"]["workers"] == 1

    # values a dataclass refuses are usage errors (exit 2), checked by the dataclass itself
    out = invoke("crop", paths.parsed, paths.folder, "--out", paths.out, "--size", "16", "--context", "8", code=2)
    assert "'context=8'" in out


def fake_model(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from rcnn.arch import get_arch

    model = SimpleNamespace(config=SimpleNamespace(propose=ProposeConfig(max_side=123, mode="quality")), spec=get_arch("fast"))
    return record(monkeypatch, "rcnn.model", "load_model", model)


def test_detect_without_options_uses_the_defaults_and_the_models_proposals(monkeypatch, paths):
    loaded = fake_model(monkeypatch)
    seen = record(monkeypatch, "rcnn.detect", "detect", [])
    invoke("detect", paths.folder, "img.jpg", "--out", paths.out)
    assert loaded["args"][1] == DetectConfig().device == "auto"
    assert seen["args"][3] == DetectConfig(propose=ProposeConfig(max_side=123, mode="quality"))
    assert seen["kwargs"]["save_images"] is True and seen["kwargs"]["save_xml"] is False

    invoke("detect", paths.folder, "img.jpg", "--out", paths.out, "--max-side", "50", "--no-box-regression",
           "--detect-proposals", "40", "--forward-batch", "8", "--draw-threshold", "0.7", "--device", "cpu")
    assert loaded["args"][1] == "cpu"
    assert seen["args"][3] == DetectConfig(box_regression=False, score_proposals=40, forward_batch=8, draw_threshold=0.7,
                                           device="cpu", propose=ProposeConfig(max_side=50, mode="quality"))


def test_detect_video_and_output_options_reach_the_library(monkeypatch, paths):
    fake_model(monkeypatch)
    seen = record(monkeypatch, "rcnn.detect", "detect", [])
    invoke("detect", paths.folder, "clip.mp4", "--out", paths.out)
    assert {k: seen["kwargs"][k] for k in ("source",)} == {"source": None}
    assert not {"save_txt", "save_conf", "save_crop"} & set(seen["kwargs"])  # not given: the library's defaults
    invoke("detect", paths.folder, "clip.mp4", "--out", paths.out, "--vid-stride", "3", "--max-frames", "10",
           "--classes", "cat,dog", "--classes", "bird", "--runtime", "onnx", "--save-txt", "--save-conf", "--save-crop")
    assert seen["args"][3] == DetectConfig(vid_stride=3, max_frames=10, keep_classes=["cat", "dog", "bird"], runtime="onnx",
                                           propose=ProposeConfig(max_side=123, mode="quality"))
    assert seen["kwargs"]["save_txt"] is seen["kwargs"]["save_conf"] is seen["kwargs"]["save_crop"] is True
    invoke("detect", paths.folder, "--source", "0", "--out", paths.out)
    assert seen["args"][1] == [] and seen["kwargs"]["source"] == "0"
    assert "give INPUTS" in invoke("detect", paths.folder, "--out", paths.out, code=2)
    assert "--vid-stride" in invoke("detect", paths.folder, "x.mp4", "--vid-stride", "0", code=2)


def test_export_passes_on_only_what_is_given(monkeypatch, paths):
    report = SimpleNamespace(arch="fast", path="m.onnx", opset=17, inputs=["image", "rois"], regions_checked=5,
                             images_checked=2, max_score_diff=1e-7, max_delta_diff=2e-7)
    seen = record(monkeypatch, "rcnn.export", "export_onnx", report)
    out = invoke("export", paths.folder, "--format", "onnx", "--out", "m.onnx")
    assert seen["args"][1] == Path("m.onnx") and seen["kwargs"] == {"images": None}
    assert "m.onnx" in out and "max |score difference| 1.0e-07" in out
    invoke("export", paths.folder, "--opset", "18", "--regions", "9", "--check-image", paths.parsed)
    assert seen["args"][1] is None and seen["kwargs"] == {"images": [Path(paths.parsed)], "opset": 18, "regions": 9}
    assert "'tflite'" in invoke("export", paths.folder, "--format", "tflite", code=2)


def test_old_batch_size_of_detection_still_works(monkeypatch, paths):
    fake_model(monkeypatch)
    seen = record(monkeypatch, "rcnn.detect", "detect", [])
    res = CliRunner().invoke(main, ["detect", paths.folder, "img.jpg", "--out", paths.out, "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    assert seen["args"][3].forward_batch == 3 and "--forward-batch" in res.output  # with a deprecation note
    assert "--batch-size" not in help_text("detect")  # hidden
    invoke("detect", paths.folder, "img.jpg", "--out", paths.out, "--batch-size", "3", "--forward-batch", "5")
    assert seen["args"][3].forward_batch == 5  # the new name wins


def test_evaluate_of_a_model_folder_passes_the_detect_config(monkeypatch, paths):
    seen = record(monkeypatch, "rcnn.evaluate", "evaluate_model", raises=DataError("stopped here"))
    out = invoke("evaluate", paths.folder, paths.parsed, code=1)
    assert "stopped here" in out
    kwargs = {k: v for k, v in seen["kwargs"].items() if k not in ("echo", "warn")}
    assert DetectConfig(**kwargs) == DetectConfig() and seen["args"][2] == "test"
    invoke("evaluate", paths.folder, paths.parsed, "--batch-size", "2", "--device", "cpu", "--threshold", "0.5", code=1)
    kwargs = {k: v for k, v in seen["kwargs"].items() if k not in ("echo", "warn")}
    assert DetectConfig(**kwargs) == DetectConfig(forward_batch=2, device="cpu", threshold=0.5)


def test_pipeline_routes_each_option_to_its_stage(monkeypatch, paths):
    seen = record(monkeypatch, "rcnn.pipeline", "run_pipeline", REPORT)
    out = invoke("pipeline", paths.folder, "--out", paths.out)
    assert seen["args"][2] == PipelineConfig()
    assert "mAP@0.5 0.5" in out and "metrics.json" in out
    invoke("pipeline", paths.folder, "--out", paths.out, "--classes", "cat, dog", "--epochs", "3", "--size", "64",
           "--max-side", "200", "--detect-proposals", "40", "--device", "cpu", "--batch-size", "2", "--hflip",
           "--workers", "1", "--backbone", "mobilenet_v2")
    c = seen["args"][2]
    assert c.classes == ["cat", "dog"] and c.workers == 1
    assert c.train == TrainConfig(epochs=3, device="cpu", hflip=True, backbone="mobilenet_v2")  # --batch-size is not training's
    assert c.crop == CropConfig(size=64) and c.propose == ProposeConfig(max_side=200)
    assert c.detect == DetectConfig(score_proposals=40, device="cpu", forward_batch=2)
    invoke("pipeline", paths.folder, "--out", paths.out, "--seed", "3")  # one seed for every stage that has one
    c = seen["args"][2]
    assert (c.seed, c.propose.seed, c.crop.seed, c.train.seed, c.fast.seed) == (3, 3, 3, 3, 3)


def test_parse_synth_demo_pass_no_defaults_of_their_own(monkeypatch, paths, tmp_path):
    seen = record(monkeypatch, "rcnn.parse", "parse_dataset", raises=DataError("stopped here"))
    invoke("parse", paths.folder, "--out", str(tmp_path / "p.json"), code=1)
    assert set(seen["kwargs"]) == {"annotations_dir", "images_dir", "classes", "strict", "progress"}
    invoke("parse", paths.folder, "--out", str(tmp_path / "p.json"), "--test-fraction", "0.5", "--classes", "a,b", code=1)
    assert seen["kwargs"]["test_fraction"] == 0.5 and seen["kwargs"]["classes"] == ["a", "b"]

    seen = record(monkeypatch, "rcnn.synth", "make_dataset")
    assert invoke("synth", str(tmp_path / "s")).startswith("40 images")  # make_dataset's default, as --help says
    assert seen["kwargs"] == {}

    seen = record(monkeypatch, "rcnn.pipeline", "run_demo", REPORT)
    invoke("demo", "--out", str(tmp_path / "d"))
    assert set(seen["kwargs"]) == {"echo", "warn"}
    invoke("demo", "--out", str(tmp_path / "d"), "--images", "12")
    assert seen["kwargs"]["images"] == 12


def test_show_and_parse_format_pass_only_what_is_given(monkeypatch, paths, tmp_path):
    seen = record(monkeypatch, "rcnn.show", "show_dataset", raises=DataError("stopped here"))
    invoke("show", paths.folder, "--out", str(tmp_path / "s"), code=1)
    assert set(seen["kwargs"]) == {"echo", "warn"}
    invoke("show", paths.parsed, "--out", str(tmp_path / "s"), "--max-images", "3", "--format", "coco", "--split", "test", code=1)
    assert seen["kwargs"]["max_images"] == 3 and seen["kwargs"]["format"] == "coco" and seen["kwargs"]["split"] == "test"
    seen = record(monkeypatch, "rcnn.parse", "parse_dataset", raises=DataError("stopped here"))
    invoke("parse", paths.folder, "--out", str(tmp_path / "p.json"), "--format", "yolo", code=1)
    assert seen["kwargs"]["format"] == "yolo"


def test_every_command_is_covered_here():
    tested = {"parse", "synth", "show", "propose", "crop", "train", "detect", "evaluate", "pipeline", "demo", "export",
              "report"}  # report: tests/test_report.py
    assert set(main.commands) == tested


# --------------------------------------------------------------------------- the CLI stays thin


def test_no_function_in_cli_is_longer_than_40_lines():
    tree = ast.parse(Path(rcnn.cli.__file__).read_text())
    lengths = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)  # decorators are not counted
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert max(lengths.values()) <= 40, sorted(lengths.items(), key=lambda kv: -kv[1])[:3]


def test_makefile_forwards_only_the_settings_given(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")

    stamp = tmp_path / "installed"  # newer than pyproject.toml: make sees nothing to install
    stamp.touch()

    def pipeline_line(*args: str, env: dict[str, str] | None = None) -> str:
        out = subprocess.run([make, "-n", "-s", "pipeline", f"STAMP={stamp}", "PYTHON=py", *args], cwd=ROOT, text=True,
                             capture_output=True, check=True, env=env).stdout
        return next(ln for ln in out.splitlines() if "rcnn.cli pipeline" in ln)

    assert pipeline_line().split() == ["py", "-m", "rcnn.cli", "pipeline", '"data/synth"', "--out", '"runs/pipeline"']
    line = pipeline_line("DATA=../shared/datasets/raccoon", "OUT=runs/r", "BACKBONE=mobilenet_v2", "EPOCHS=3",
                         "EXTRA=--hflip", "ARCH=rcnn")
    assert line.split()[4:] == ['"../shared/datasets/raccoon"', "--out", '"runs/r"', "--arch", "rcnn", "--backbone",
                                "mobilenet_v2", "--epochs", "3", "--hflip"]
    assert "--size" not in pipeline_line(env={**os.environ, "SIZE": "99"})  # only the command line counts


def test_cli_module_imports_no_torch():
    """Options read their defaults lazily: `rcnn parse` and `rcnn synth` start without torch."""
    code = "import sys, rcnn.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
