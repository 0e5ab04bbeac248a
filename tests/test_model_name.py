"""``model.name`` follows ``model.path`` unless given, and the default model keeps its old hashes."""

from __future__ import annotations

from experiments.infra.results import config_hash
from experiments.infra.runtime import with_model_name
from tests.test_sweeps import composed


def test_a_run_on_another_folder_is_labelled_by_that_folder():
    config = with_model_name(composed("model.path=/models/qwen2-0.5b"))
    assert config["model"]["name"] == "qwen2-0.5b"
    assert with_model_name(composed("model.path=/models/qwen2-0.5b", "model.name=mine"))["model"]["name"] == "mine"


def test_the_default_model_hashes_as_when_its_name_was_written_out():
    # conf/model/smollm2-135m.yaml said `name: smollm2-135m` before the name was derived.
    assert with_model_name(composed()) == composed("model.name=smollm2-135m")
    assert config_hash(with_model_name(composed("method=h2o"))) == config_hash(
        composed("method=h2o", "model.name=smollm2-135m")
    )
