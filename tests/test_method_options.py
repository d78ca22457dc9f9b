"""Method options are dataclass fields: defaults, rules, types and records all read them."""

from __future__ import annotations

import dataclasses
import inspect
from importlib.metadata import EntryPoint

import pytest

from mgsr_bench import config
from mgsr_bench.config import available_recipes
from mgsr_bench.errors import UserError
from mgsr_bench.methods import Method, available_methods, get_method, option, option_names
from mgsr_bench.methods.options import Rule


def test_every_method_is_a_keyword_only_dataclass_whose_fields_are_its_options():
    """The constructor, options() and option_names() are the fields, so ``--set`` reflection, run
    records and validation cannot disagree."""
    for name, cls in available_methods().items():
        fields = [f.name for f in dataclasses.fields(cls)]
        parameters = inspect.signature(cls.__init__).parameters
        assert [k for k in parameters if k != "self"] == fields, name
        assert all(parameters[k].kind is inspect.Parameter.KEYWORD_ONLY for k in fields), name
        assert list(get_method(name).options()) == fields == list(option_names(name)), name


@pytest.mark.parametrize("rule, value, problem", [
    (Rule(gt=0), 0, "must be > 0, got 0"),
    (Rule(ge=0), -1.5, "must be >= 0, got -1.5"),
    (Rule(ge=0, le=1), 1.5, "must be in [0, 1], got 1.5"),
    (Rule(ge=0, lt=1), 1.0, "must be in [0, 1), got 1.0"),
    (Rule(choices=("a", "b")), "c", "must be one of a, b, got 'c'"),
    (Rule(gt=0), float("nan"), "must be > 0, got nan"),
])
def test_a_rule_names_what_it_accepts(rule, value, problem):
    assert rule.problem(value) == problem


def test_options_are_checked_by_name_type_and_rule():
    with pytest.raises(UserError, match=r"unknown option 'temprature'; did you mean 'temperature'\?"):
        get_method("kd", temprature=2.0)
    with pytest.raises(UserError, match=r"unknown option 'x'; its options: none"):
        get_method("sft", x=1)
    with pytest.raises(UserError, match=r"option 'capacity' of method 'distillm' must be of type int, got 1.5"):
        get_method("distillm", capacity=1.5)
    with pytest.raises(UserError, match=r"bad options for method 'distillm': replay_ratio must be one of"):
        get_method("distillm", replay_ratio="sometimes")
    with pytest.raises(UserError, match=r"bad options for method 'mgsr': fixed_lower must be < fixed_upper"):
        get_method("mgsr", subnet="fixed", fixed_lower=0.5, fixed_upper=0.5)
    with pytest.raises(ValueError, match=r"sft_weight must be in \[0, 1\], got 2"):  # built in code: the same rules
        available_methods()["kd"](sft_weight=2)


def test_a_subclass_with_its_own_options_needs_no_decorator():
    class Scaled(Method):
        name = "scaled-test"
        scale: float = option(1.0, gt=0)

    assert Scaled(scale=2.0).options() == {"scale": 2.0}
    with pytest.raises(ValueError, match="scale must be > 0, got 0"):
        Scaled(scale=0)
    assert Scaled() is not Scaled() and Scaled() != Scaled()  # equal by identity: each holds its own state


def test_recipe_options_keep_the_values_they_were_given():
    """Records hash the options as the recipe spells them (an int stays an int), so that a run
    record's config hash does not move when a method's options are declared differently."""
    for path in available_recipes().values():
        recipe = config.load_recipe(str(path))
        options = get_method(recipe.method, **recipe.options).options()
        assert {k: options[k] for k in recipe.options} == recipe.options, recipe.name


def test_a_recipe_entry_point_must_load_and_name_a_folder(monkeypatch):
    for value, says in (("os:devnull", r"recipe entry point 'bad' \(os:devnull\) names no folder"),
                        ("no_such_module_here:RECIPES", r"cannot load recipe entry point 'bad'")):
        monkeypatch.setattr("importlib.metadata.entry_points",
                            lambda group, value=value: [EntryPoint(name="bad", value=value, group=group)])
        with pytest.raises(UserError, match=says):
            config.package_recipe_dirs()
