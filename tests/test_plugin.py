"""A method from another package: registered by entry point, with its own recipe, trained and evaluated
through the command line, with nothing of it in mgsr_bench/ (docs/recipes.md, "Adding a method from
another package", walks through this same package)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from mgsr_bench.methods import registry

PACKAGE = "mixed_kl_plugin"

METHOD = '''\
"""A distillation method of its own: a mix of forward and reverse KL."""

from pathlib import Path

from mgsr_bench.losses import divergences as D
from mgsr_bench.methods import Method, option

RECIPES = Path(__file__).parent / "recipes"  # the folder its entry point in mgsr_bench.recipes names


class MixedKL(Method):
    """(1 - mix) * KL(p || q) + mix * KL(q || p) per response token, at a temperature."""

    name = "mixed-kl"

    mix: float = option(0.5, ge=0, le=1)
    temperature: float = option(1.0, gt=0)

    def token_losses(self, student_logits, teacher_logits, tokens):
        forward = D.forward_kl(student_logits, teacher_logits, self.temperature)
        reverse = D.reverse_kl(student_logits, teacher_logits, self.temperature)
        return (1 - self.mix) * forward + self.mix * reverse
'''

RECIPE = """\
method: mixed-kl
description: three parts forward KL, one part reverse KL, on ground-truth responses
reference: a plug-in's own recipe
options: {mix: 0.25}
train: {steps: 2, micro_batch: 4, eval_every: 2, val_metric: loss, val_size: 8}
"""

ENTRY_POINTS = f"""\
[mgsr_bench.methods]
mixed-kl = {PACKAGE}:MixedKL

[mgsr_bench.recipes]
{PACKAGE} = {PACKAGE}:RECIPES
"""


def install_plugin(site: Path) -> None:
    """The package as ``pip install`` would leave it in ``site``: its module, its recipe, and a dist-info
    whose entry_points.txt is what ``importlib.metadata`` reads (the project's ``pyproject.toml``
    declares the same under ``[project.entry-points."mgsr_bench.methods"]`` and ``."mgsr_bench.recipes"``)."""
    package = site / PACKAGE
    (package / "recipes").mkdir(parents=True)
    (package / "__init__.py").write_text(METHOD)
    (package / "recipes" / "mixed-kl-quarter.yaml").write_text(RECIPE)
    dist_info = site / f"{PACKAGE}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    """The plug-in installed on ``sys.path`` for this test only (its module and registry entry removed after)."""
    site = tmp_path / "site"
    install_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield site
    sys.modules.pop(PACKAGE, None)


def test_a_method_from_another_package_trains_and_is_evaluated(plugin, hub_style_pair, cli):
    p = hub_style_pair
    listed = cli("list")
    assert listed.returncode == 0 and "mixed-kl" in listed.stdout and "mixed-kl-quarter" in listed.stdout
    proc = cli("train", "mixed-kl-quarter", "--teacher", str(p / "teacher"), "--student", str(p / "student"),
               "--train-data", str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"), "--out", str(p / "run"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((p / "run" / "training.json").read_text())
    assert summary["config"]["recipe"] == "mixed-kl-quarter" and summary["config"]["method"] == "mixed-kl"
    assert summary["config"]["options"] == {"mix": 0.25, "temperature": 1.0}  # the recipe's and the field's default
    assert len(summary["training"]["history"]) == 2
    proc = cli("eval", str(p / "run"), "--label", "mixed-kl-quarter", "--data", f"test={p / 'test.jsonl'}",
               "--seeds", "10", "--max-new-tokens", "8", "--out", str(p / "eval"))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((p / "eval" / "records" / "mixed-kl-quarter.json").read_text())
    assert record["label"] == "mixed-kl-quarter" and set(record["scores"]["test"]["per_seed"]) == {"10"}
    # the plug-in's options are held to their fields' rules like a built-in's, before any model loads
    (p / "bad.yaml").write_text("method: mixed-kl\noptions: {mix: 2}\n")
    refused = cli("train", str(p / "bad.yaml"), "--teacher", str(p / "teacher"), "--student", str(p / "student"),
                  "--train-data", str(p / "train.jsonl"), "--valid-data", str(p / "valid.jsonl"),
                  "--out", str(p / "refused"))
    assert refused.returncode == 2 and "mix must be in [0, 1], got 2" in refused.stderr, refused.stderr
