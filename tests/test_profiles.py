"""kn.profiles: every table's keys are settings its experiment takes, KEYS match the config classes
(checked both ways), and a wrong key, in a table or an override, is a DataError naming the key and
the allowed ones.   Run: pytest tests/test_profiles.py
"""
from dataclasses import fields, replace

import pytest

from kn import profiles
from kn.augmentation import augmentation_configs
from kn.dynamics_config import DynamicsConfig
from kn.errors import DataError
from kn.extraction import DATA_KEYS, ExtractionConfig, from_profile
from kn.models import ModelConfig
from kn.onelayer import DEFAULTS, onelayer_points
from kn.probe_select import RANKS
from kn.probing_study import probed_configs
from kn.profiles import KEYS, MODEL_KEYS, PROFILES, TABLES, settings


def names(cls) -> set:
    return {f.name for f in fields(cls)}


def test_keys_are_the_configs_fields():
    assert set(KEYS["extraction"]) == names(ExtractionConfig) - {"data"} | set(DATA_KEYS) | {"vocab_size", "mixed_exposures"}
    assert set(KEYS["dynamics"]) == names(DynamicsConfig) - {"data"} | {"n", "vocab_size"}
    assert set(KEYS["onelayer"]) == set(DEFAULTS) - {"runs_dir"}
    assert set(MODEL_KEYS) == names(ModelConfig)
    assert set(KEYS) == set(TABLES) and all(set(t) == set(PROFILES) for t in TABLES.values())


@pytest.mark.parametrize("profile", PROFILES)
def test_chapter_tables_name_runs_their_chapters_build(profile):
    """Each augmentation a chapter's table names is a config of that chapter (probing's: one of the
    augmentation chapter's models), and a name not run there is a DataError naming it."""
    for chapter in ("mixed_training", "augmentation", "bidirectional"):
        for a in settings(chapter, profile)["augments"]:
            assert from_profile(profile, augment=a).data.augment == a
    assert list(probed_configs(profile)) == settings("probing", profile)["augments"]


def test_probing_models_are_the_augmentation_chapters_at_the_tables_people():
    """Probing's models are the augmentation chapter's configs, at its table's `n` people where it names them."""
    for profile in PROFILES:
        n, every = settings("probing", profile)["n"], augmentation_configs(profile)
        for a, cfg in probed_configs(profile).items():
            assert cfg.data.n == (n or every[a].data.n)
            assert replace(cfg, data=replace(cfg.data, n=every[a].data.n)) == every[a]
        assert set(RANKS) <= set(settings("probing", profile)["ranks"])      # a profile's grid extends kn's


def test_probing_a_model_the_augmentation_chapter_lacks(monkeypatch):
    table = {**TABLES["probing"], "cpu": {**TABLES["probing"]["cpu"], "augments": ["single", "fullname"]}}
    monkeypatch.setitem(profiles.TABLES, "probing", table)
    with pytest.raises(DataError, match=r"^augments: \['fullname'\] not run by the augmentation chapter at cpu"):
        probed_configs("cpu")


@pytest.mark.parametrize("experiment", sorted(TABLES))
def test_every_table_is_valid(experiment):
    for profile in PROFILES:
        assert settings(experiment, profile) == TABLES[experiment][profile]


def test_misspelt_override_names_itself_and_the_allowed_keys():
    with pytest.raises(DataError, match=r"^n_peeple: unknown setting for extraction; allowed: n, vocab_size, kind, "):
        from_profile("cpu", n_peeple=3)
    with pytest.raises(DataError, match=r"^n_layers: unknown setting for extraction model; allowed: arch, n_layer, "):
        from_profile("smoke", model={"n_layers": 3})
    with pytest.raises(DataError, match=r"^fraction: unknown setting for onelayer; allowed: arch, "):
        onelayer_points("smoke", "runs", fraction=[0.5])
    cfg = from_profile("smoke", n=30, augment="multi2", lr=1e-2, model={"n_layer": 1, "n_embd": 32, "n_head": 2})
    assert (cfg.data.n, cfg.data.augment, cfg.lr, cfg.model.n_layer) == (30, "multi2", 1e-2, 1)


def test_misspelt_table_key_is_named(monkeypatch):
    table = {**TABLES["probing"], "cpu": {**TABLES["probing"]["cpu"], "epoch": 3}}
    monkeypatch.setitem(profiles.TABLES, "probing", table)
    with pytest.raises(DataError, match=r"^epoch: unknown setting for probing; allowed: steps, augments, n, ranks$"):
        settings("probing", "cpu")
    assert settings("probing", "smoke") == TABLES["probing"]["smoke"]


def test_unknown_experiment_and_profile():
    with pytest.raises(DataError, match="^experiment: got 'extract'"):
        settings("extract", "cpu")
    with pytest.raises(DataError, match="^profile: got 'laptop'; allowed: smoke, class, cpu, gpu, paper"):
        settings("extraction", "laptop")
