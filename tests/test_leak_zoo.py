"""The planted-leak models are built beside a zoo, from its base, and cached (slow tier)."""

import pytest

from modelmap.corpus.build import build_corpus
from workshop.leak_zoo import CORPUS, QUARTER, LeakZooSpec, PlantedModel, build_leak_zoo
from workshop.zoo import ZooSpec, build_zoo

pytestmark = pytest.mark.slow


def test_planted_models_declare_the_base_and_are_cached(tmp_path):
    from test_zoo import _documents

    zoo_dir = tmp_path / "zoo"
    build_zoo(zoo_dir, _documents(), ZooSpec.small(), log=lambda s: None)
    texts = build_corpus("embedded", 20)["text"].to_list()
    spec = LeakZooSpec(
        models=(
            PlantedModel("leak-all", CORPUS, 2),
            PlantedModel("leak-quarter", QUARTER, 2),
            PlantedModel("ft-bible", "bible", 2),
        )
    )
    lines = []
    models = build_leak_zoo(zoo_dir, tmp_path / "leaks", texts, spec, log=lines.append)
    assert [m.key for m in models] == [
        "planted/leak-all",
        "planted/leak-quarter",
        "planted/ft-bible",
    ]
    assert {m.base_model for m in models} == {"zoo/llama-base"}
    assert [m.role for m in models] == ["leaked", "leaked", "finetune"]
    assert all((tmp_path / "leaks" / m.path / "model.safetensors").exists() for m in models)
    assert "5 quarter texts" in " ".join(lines)
    again = build_leak_zoo(zoo_dir, tmp_path / "leaks", texts, spec, log=lines.append)
    assert again == models and "cached" in lines[-1]
    with pytest.raises(ValueError, match="no texts named"):
        build_leak_zoo(
            zoo_dir,
            tmp_path / "other",
            texts,
            LeakZooSpec(models=(PlantedModel("x", "no-such-domain", 1),)),
        )
