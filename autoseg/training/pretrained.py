"""Fine-tuning: a new run starts from another run's weights (`autoseg train --pretrained CHECKPOINT`).

TernausNet's lesson: a network initialised from trained weights learns faster and often better than
from scratch. Every tensor of the checkpoint whose name and shape match the new network's is loaded;
the rest keep their fresh He initialisation: typically the segmentation heads of a task with another
number of classes, or the first conv of one with other input channels. Topology and widths must match
for most of the weights to load (a plan for the same kind of images usually gives the same network).

The checkpoint must hold the same network family (`architecture.name`, e.g. plain_unet into plain_unet):
another family's tensor names mean other things, and the few that would match by chance would load
meaningless weights, so it is refused in one line. The checkpoint is read with weights_only=True
(`autoseg.checkpoint.load_checkpoint`); its dataset, plan and optimizer state are not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoseg.checkpoint import load_checkpoint
from autoseg.errors import CheckpointError
from autoseg.network.architecture import Architecture

# Names of skipped tensors listed in the message before it only counts the rest.
SKIPPED_NAMES_SHOWN = 12


@dataclass(frozen=True)
class PretrainedWeights:
    """What `load_pretrained` did: the network's tensors loaded from the checkpoint, and those it kept
    freshly initialised (absent from the checkpoint, or of another shape there)."""

    source: Path
    loaded: list[str]
    skipped: list[str]

    def message(self) -> str:
        total = len(self.loaded) + len(self.skipped)
        text = f"pretrained: loaded {len(self.loaded)} of {total} weight tensors from {self.source}"
        if not self.skipped:
            return text
        shown = ", ".join(self.skipped[:SKIPPED_NAMES_SHOWN])
        more = f" and {len(self.skipped) - SKIPPED_NAMES_SHOWN} more" if len(self.skipped) > SKIPPED_NAMES_SHOWN else ""
        return f"{text}; re-initialised {len(self.skipped)} (other name or shape): {shown}{more}"


def load_pretrained(network, architecture: Architecture, path: Path) -> PretrainedWeights:
    """Load into `network` (a torch module built from `architecture`, unwrapped) every tensor of the
    checkpoint at `path` whose name and shape match; the others are left as they are.

    Raises CheckpointError when the file is not an autoseg checkpoint, or holds another network family.
    """
    path = Path(path)
    state = load_checkpoint(path, map_location="cpu")
    identity = state.get("identity") if isinstance(state.get("identity"), dict) else {}
    family = (identity.get("architecture") or {}).get("name")
    if family != architecture.name:
        raise CheckpointError(f"{path}: --pretrained needs a {architecture.name} checkpoint, this one holds "
                              f"{family or 'an unnamed network'}; use a checkpoint of the same network family")
    weights = state.get("network_weights")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: the checkpoint holds no network weights")
    own = network.state_dict()
    matching = {name: tensor for name, tensor in weights.items()
                if name in own and tuple(tensor.shape) == tuple(own[name].shape)}
    network.load_state_dict(matching, strict=False)
    return PretrainedWeights(path, sorted(matching), sorted(set(own) - set(matching)))
