from importlib.metadata import EntryPoint

import pytest

from mgsr_bench.config import available_recipes, load_recipe, train_config
from mgsr_bench.errors import UserError
from mgsr_bench.methods import Method, available_methods, get_method, registry


def test_builtins_are_registered():
    assert {"sft", "kd"} <= set(available_methods())
    assert get_method("kd", temperature=2.0).temperature == 2.0
    assert not get_method("sft").needs_teacher


def test_unknown_method_lists_known_ones():
    with pytest.raises(UserError, match=r"unknown method 'kdd' \(did you mean 'kd'\?\); known methods: .*sft"):
        get_method("kdd")


def test_bad_method_options_are_user_errors():
    with pytest.raises(UserError, match="bad options for method 'kd'"):
        get_method("kd", temprature=2.0)
    with pytest.raises(UserError, match="temperature must be > 0"):
        get_method("kd", temperature=-1)


def test_recipes_load_by_name_and_path():
    recipes = available_recipes()
    assert {"sft", "kd"} <= set(recipes)
    by_name = load_recipe("kd")
    assert by_name.method == "kd" and by_name.options["temperature"] == 1.0
    assert load_recipe(str(recipes["kd"])).options == by_name.options


def test_recipe_errors(tmp_path):
    with pytest.raises(UserError, match="unknown recipe 'nope'; known recipes"):
        load_recipe("nope")
    with pytest.raises(UserError, match=r"recipe file not found: .*missing\.yaml \(name an existing file"):
        load_recipe(str(tmp_path / "missing.yaml"))  # a path that is not there: not taken for a name
    bad = tmp_path / "r.yaml"
    bad.write_text("method: kd\noptinos: {}\n")
    with pytest.raises(UserError, match="unknown key 'optinos'.*did you mean 'options'"):
        load_recipe(str(bad))
    bad.write_text("method: kd\ntrain: {stpes: 3}\n")
    with pytest.raises(UserError, match="unknown key 'stpes'.*did you mean 'steps'"):
        load_recipe(str(bad))
    bad.write_text("method: [unclosed\n")
    with pytest.raises(UserError, match="malformed recipe"):
        load_recipe(str(bad))
    bad.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(UserError, match="malformed recipe"):
        load_recipe(str(bad))


def test_train_config_validation():
    assert train_config({"lr": 1}).lr == 1.0
    with pytest.raises(UserError, match="train.steps must be >= 1"):
        train_config({"steps": 0})
    with pytest.raises(UserError, match="train.steps must be of type int"):
        train_config({"steps": "ten"})


class _Plugin(Method):
    """A third-party method."""

    name = "plugin-method"
    needs_teacher = False

    def token_losses(self, student_logits, teacher_logits, tokens):
        return student_logits.sum(-1) * 0


def test_entry_point_methods_are_discovered(monkeypatch):
    ep = EntryPoint(name="plugin-method", value=f"{__name__}:_Plugin", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep] if group == registry.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert isinstance(get_method("plugin-method"), _Plugin)


def test_entry_point_must_be_a_method(monkeypatch):
    ep = EntryPoint(name="broken", value="os:path", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep])
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(UserError, match="not a mgsr_bench.methods.Method subclass"):
        available_methods()


def test_recorded_options_recreate_the_method():
    """A run record's options must be valid options: every recipe's method round-trips."""
    for path in available_recipes().values():
        recipe = load_recipe(str(path))
        method = get_method(recipe.method, **recipe.options)
        again = get_method(recipe.method, **method.options())
        assert again.options() == method.options(), recipe.name
