"""The run folder's rules, the same for every task: the -o rule and the recipe a resumed run keeps."""

from __future__ import annotations

import pytest
import yaml

from dccnext_cli.classification.recipe import load_recipe
from dccnext_cli.dense.recipe import load_dense_recipe
from dccnext_cli.errors import ConfigError, OutputExistsError
from dccnext_cli.training.run_folder import check_output, recipe_of_run


def test_a_folder_is_refused_only_when_it_holds_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    check_output(tmp_path, resume=False, overwrite=False)  # the user's own files are no run
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(OutputExistsError, match=r"already holds a run \(summary.json\); pass --resume"):
        check_output(tmp_path, resume=False, overwrite=False)
    check_output(tmp_path, resume=True, overwrite=False)
    check_output(tmp_path, resume=False, overwrite=True)
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output(tmp_path / "notes.txt", resume=False, overwrite=False)


@pytest.mark.parametrize("family", ["classification", "dense"])
def test_a_resumed_run_keeps_its_recipe_and_takes_only_launch_keys(family, tmp_path):
    load = (lambda sets: load_recipe("quickstart", sets)) if family == "classification" else \
        (lambda sets: load_dense_recipe("semantic-fpn", sets))
    started = load(["lr=0.002", "workers=1", "log_every=5"])
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({**started.to_dict(), "weights": "w.safetensors"}))
    # nothing asked: the run's own recipe, whatever the one given now says
    assert recipe_of_run(tmp_path, load([]), explicit={}) == started
    # launch keys given now win; the rest stays the run's
    now = recipe_of_run(tmp_path, load(["workers=3", "checkpoint_minutes=1"]),
                        explicit={"workers": 3, "checkpoint_minutes": 1})
    assert (now.workers, now.checkpoint_minutes, now.lr, now.log_every) == (3, 1, 0.002, 5)
    # a key that says what the run trains, given with another value: refused by name
    with pytest.raises(ConfigError, match=r"was started with lr=0.002, not 0.003; a resumed run keeps its recipe"):
        recipe_of_run(tmp_path, load(["lr=0.003"]), explicit={"lr": 0.003})
    # a caller that passes a whole recipe (the Python API) has given every key
    with pytest.raises(ConfigError, match="was started with lr=0.002"):
        recipe_of_run(tmp_path, load([]), explicit=None)
    assert recipe_of_run(tmp_path, started, explicit=None) == started
