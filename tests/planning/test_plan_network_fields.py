"""plans.json fields of the networks work: a configuration's `loss` entry and the architecture's
`conv_block`, with their defaults for plans written before they existed and one-line errors naming them."""

import pytest

from autoseg.errors import PlanError
from autoseg.planning import Plans, plan_experiment
from test_planning import _bad, _fullres, make_fingerprint


@pytest.fixture(scope="module")
def small_plans() -> Plans:
    return plan_experiment(make_fingerprint())


def test_old_plan_without_the_fields_loads_with_the_defaults(small_plans):
    data = small_plans.to_json()
    entry = _fullres(data)
    entry.pop("loss")
    assert "conv_block" not in entry["architecture"]  # a default is not written: old plans look the same
    configuration = Plans.from_json(data).configuration("3d_fullres")
    assert configuration.loss == {"name": "dice_ce", "weight_ce": 1.0, "weight_dice": 1.0}
    assert configuration.architecture.conv_block == "plain"


def test_a_loss_entry_is_completed_with_its_defaults_and_round_trips(small_plans):
    data = small_plans.to_json()
    _fullres(data)["loss"] = {"name": "tversky", "alpha": 0.2, "beta": 0.8}
    data["configurations"]["3d_fullres_focal"] = {"inherits_from": "3d_fullres", "loss": {"name": "focal_dice"}}
    plans = Plans.from_json(data)
    assert plans.configuration("3d_fullres").loss == {"name": "tversky", "alpha": 0.2, "beta": 0.8}
    assert plans.configuration("3d_fullres_focal").loss == {"name": "focal_dice", "gamma": 2.0, "weight_focal": 1.0,
                                                            "weight_dice": 1.0}
    assert Plans.from_json(plans.to_json()).to_json() == plans.to_json()


@pytest.mark.parametrize("loss, expected", [
    ({"name": "lovasz"}, "unknown loss 'lovasz' (known: dice_ce, generalized_dice, tversky, focal_dice)"),
    ({"name": "tversky", "gamma": 2}, "loss 'tversky' has no parameter 'gamma' (its parameters: alpha, beta)"),
    ({"name": "focal_dice", "gamma": "2"}, "parameter 'gamma' of loss 'focal_dice' is '2', expected a number >= 0"),
    ({"name": "tversky", "alpha": 0.5, "beta": 0.7}, "tversky alpha + beta must be 1"),
    ("dice_ce", "expected an object with a 'name'"),
])
def test_a_bad_loss_entry_is_one_line_naming_the_field(small_plans, loss, expected):
    message = _bad(small_plans, lambda d: _fullres(d).update(loss=loss))
    assert "'3d_fullres'" in message and "field 'loss'" in message and expected in message
    assert "\n" not in message


def test_conv_block_is_validated(small_plans):
    message = _bad(small_plans, lambda d: _fullres(d)["architecture"].update(conv_block="dense"))
    assert "'conv_block' is 'dense', expected one of plain, rep" in message
    rep = small_plans.to_json()
    _fullres(rep)["architecture"]["conv_block"] = "rep"
    assert Plans.from_json(rep).configuration("3d_fullres").architecture.conv_block == "rep"
    even = _bad(small_plans, lambda d: _fullres(d)["architecture"].update(
        conv_block="rep", kernel_sizes=[[2, 3, 3]] + _fullres(d)["architecture"]["kernel_sizes"][1:]))
    assert "'kernel_sizes'" in even and "odd sizes with conv_block 'rep'" in even
