"""Strict config loading: unknown keys and wrong types name the key at fault."""

import pytest

from t2i_drift.training.config import Config, ConfigError, apply_overrides, load_config, save_config


def test_defaults_and_overrides_are_typed():
    cfg = apply_overrides(
        Config(),
        [
            "train.max_steps=7",
            "optim.learning_rate=1e-3",
            "drift.temperatures=[0.1, 0.2]",
            "model.overrides={num_layers: 1}",
            "train.resume_from_checkpoint=null",
        ],
    )
    assert cfg.train.max_steps == 7
    assert cfg.optim.learning_rate == 1e-3
    assert cfg.drift.temperatures == [0.1, 0.2]
    assert cfg.model.overrides == {"num_layers": 1}
    assert cfg.train.resume_from_checkpoint is None


def test_a_bare_no_means_no_mixed_precision():
    """YAML reads `no` as false; Accelerate's own configs write `mixed_precision: no`."""
    assert apply_overrides(Config(), ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        apply_overrides(Config(), ["train.mixed_precision=yes"])  # true is not a precision


def test_int_promotes_to_float_but_not_back():
    cfg = apply_overrides(Config(), ["optim.learning_rate=1"])
    assert isinstance(cfg.optim.learning_rate, float)
    with pytest.raises(ConfigError, match="train.max_steps"):
        apply_overrides(Config(), ["train.max_steps=1.5"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.max_stepz=3", "train.max_stepz"),
        ("trian.max_steps=3", "trian"),
        ("train.mixed_precision=fp8", "train.mixed_precision"),
        ("features.raw=yes please", "features.raw"),
        ("drift.temperatures=[0.1, abc]", "drift.temperatures[1]"),
        ("features.drop_keys=[*/loc]", "features.drop_keys=.*not valid YAML .*quote"),  # * is a YAML alias
    ],
)
def test_bad_overrides_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("drift.samples_per_prompt=0", "drift.samples_per_prompt"),
        # The default's one sample per prompt is its own only negative: not with guidance or self-masking.
        (["drift.alpha_max=4", "drift.samples_per_prompt=1"], "drift.samples_per_prompt"),
        ("drift.mask_self=true", "drift.samples_per_prompt"),
        ("drift.temperatures=[0.05, 0]", "drift.temperatures"),
        ("drift.memory_budget_mb=-5", "drift.memory_budget_mb"),
        ("drift.alpha_max=0.5", "drift.alpha_max"),
        (
            ["drift.samples_per_prompt=4", "drift.alpha_max=4", "drift.sibling_negatives=false"],
            "drift.sibling_negatives",
        ),
        ("train.batch_size=0", "train.batch_size"),
        # Checked when the run starts, not at export or deep in torch:
        ("eval.guidance_scale=10", "eval.guidance_scale"),
        ("eval.samples_per_grid_prompt=0", "eval.samples_per_grid_prompt"),
        ("eval.sample_prompts=[]", "eval.sample_prompts"),
        ("train.checkpointing_steps=0", "train.checkpointing_steps"),
        ("train.log_every=0", "train.log_every"),
        ("train.max_steps=0", "train.max_steps"),
        ("data.resolution=30", "data.resolution"),
        ("data.resolution=0", "data.resolution"),
        ("optim.learning_rate=-1", "optim.learning_rate"),
        ("optim.learning_rate=1e30", "optim.learning_rate"),
        ("optim.betas=[2, 3]", "optim.betas"),
        ("optim.ema_decay=2", "optim.ema_decay"),
        ("train.output_dir=", "train.output_dir"),
        ("data.shapes_omit=[colour]", "data.shapes_omit"),
        ("drift.affinity_floor=-0.1", "drift.affinity_floor"),
        ("data.shapes_omit=[size, size]", "data.shapes_omit"),
        ("data.shapes_omit=[position]", "data.shapes_omit"),  # the default data is openmoji
    ],
)
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, override if isinstance(override, list) else [override])
    assert load_config(None, ["drift.memory_budget_mb=null"]).drift.memory_budget_mb is None


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*train\.batch_sise"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_save_and_reload_roundtrip(tmp_path):
    cfg = apply_overrides(Config(), ["train.batch_size=3", "eval.sample_prompts=[a, b]"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_shipped_recipes_load():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    from t2i_drift.training.mae_config import load_mae_config

    root = Path(__file__).parent.parent / "recipes"
    recipes = sorted(root.glob("*.yaml")) + sorted(root.glob("gpu/*.yaml"))
    assert len(recipes) >= 6, "recipes missing"
    for recipe in recipes:
        load_config(recipe)
    for recipe in sorted(root.glob("mae/*.yaml")):
        load_mae_config(recipe)
    topologies = {p.stem: load_config_from_file(str(p)) for p in root.glob("accelerate/*.yaml")}
    assert {"cpu", "ddp", "fsdp", "hsdp", "zero2", "zero3"} <= set(topologies)
    assert topologies["fsdp"].fsdp_config["fsdp_version"] == 2


def test_default_recipe_file_equals_builtin_defaults():
    """`train_t2i.py` with no arguments and with --config recipes/openmoji_32px.yaml run the same."""
    from pathlib import Path

    recipe = Path(__file__).parent.parent / "recipes" / "openmoji_32px.yaml"
    assert load_config(recipe) == Config()


def test_every_config_value_loads_or_names_its_key():
    """Property: any value for any key either loads or raises a ConfigError naming that key."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from t2i_drift.training.config_docs import config_keys

    keys = [k.key for k in config_keys(Config)]
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(alphabet="abcxyz_-./ 0123456789", max_size=12),
    )
    values = st.one_of(scalars, st.lists(scalars, max_size=3))

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(key=st.sampled_from(keys), value=values)
    def check(key, value):
        import json

        text = json.dumps(value) if not isinstance(value, float) or value == value else ".nan"
        try:
            load_config(None, [f"{key}={text}"])
        except ConfigError as err:
            assert key.split(".")[0] in str(err) and (key in str(err) or key.rsplit(".", 1)[0] in str(err)), (
                key,
                str(err),
            )

    check()


def test_pipe_urls_run_shell_commands_only_when_allowed():
    base = ["data.name=webdataset"]
    with pytest.raises(
        ConfigError, match="data.path = .* a pipe: URL runs a shell command.*data.allow_shell=true"
    ):
        load_config(None, [*base, "data.path=shards/a.tar::pipe:curl -s http://x/b.tar"])
    cfg = load_config(None, [*base, "data.path=pipe:cat a.tar", "data.allow_shell=true"])
    assert cfg.data.allow_shell
    load_config(None, [*base, "data.path=shards/{0..3}.tar"])  # plain paths need nothing
