"""Loading a fold's network for prediction: rep blocks come back fused (same outputs, plain convs), and a
checkpoint saved before Architecture had `conv_block` still matches a plan of plain blocks."""

from pathlib import Path

import pytest
import torch

from autoseg.checkpoint import check_identity, identity_of_configuration, save_checkpoint
from autoseg.errors import CheckpointError
from autoseg.inference.model import load_network
from autoseg.network import build_network
from autoseg.network.rep import RepConv
from autoseg.planning.plans import Plans
from test_predict import block_plans  # noqa: F401 - a fixture

CONFIGURATION = "3d_fullres"


def with_conv_block(plans: Plans, conv_block: str) -> Plans:
    data = plans.to_json()
    data["configurations"][CONFIGURATION]["architecture"]["conv_block"] = conv_block
    return Plans.from_json(data)


def test_rep_network_is_loaded_fused_with_the_same_outputs(block_plans, tmp_path):
    plans = with_conv_block(block_plans, "rep")
    architecture = plans.configuration(CONFIGURATION).architecture
    torch.manual_seed(0)
    trained = build_network(architecture).eval()
    trained.deep_supervision = False
    path = save_checkpoint({"network_weights": trained.state_dict(),
                            "identity": identity_of_configuration(plans, CONFIGURATION)}, tmp_path / "final.pt")
    loaded, _ = load_network(plans, CONFIGURATION, path, torch.device("cpu"))
    assert not any(isinstance(m, RepConv) for m in loaded.modules())
    x = torch.randn(1, architecture.input_channels, *(2 * n for n in architecture.total_downsampling()))
    with torch.no_grad():
        assert float((loaded(x) - trained(x)).abs().max()) < 1e-4


def test_checkpoint_identity_from_before_conv_block_matches_plain_blocks(block_plans):
    expected = identity_of_configuration(block_plans, CONFIGURATION)
    old = {**expected, "architecture": {k: v for k, v in expected["architecture"].items() if k != "conv_block"}}
    check_identity({"identity": old}, expected, Path("old.pt"))
    with pytest.raises(CheckpointError, match="architecture differs"):
        check_identity({"identity": old}, identity_of_configuration(with_conv_block(block_plans, "rep"),
                                                                    CONFIGURATION), Path("old.pt"))
