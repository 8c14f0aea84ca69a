"""One training step, as the trainer runs it and as the device benchmark times it.

    optimizer = make_optimizer(network.parameters())
    loss_function = build_training_loss(...)          (autoseg.training.loss)
    loss = train_step(network, loss_function, optimizer, scaler, data, target, amp_dtype)

nnU-Net's optimisation (reference section 5.1): SGD with Nesterov momentum 0.99, weight decay 3e-5,
a poly learning-rate schedule from 1e-2, the gradient norm clipped to 12. The cost model of
`autoseg.budget` times `train_step` itself, so the step it predicts is the step the trainer runs.
"""

from __future__ import annotations

INITIAL_LR = 1e-2
MOMENTUM = 0.99
WEIGHT_DECAY = 3e-5
POLY_EXPONENT = 0.9
GRAD_CLIP_NORM = 12.0


def poly_lr(epoch: int, total_epochs: int, initial_lr: float) -> float:
    return initial_lr * (1 - epoch / total_epochs) ** POLY_EXPONENT


def make_optimizer(parameters, initial_lr: float = INITIAL_LR):
    import torch

    return torch.optim.SGD(parameters, lr=initial_lr, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)


def make_grad_scaler(device, amp_dtype):
    """A gradient scaler for fp16 on CUDA (fp16 gradients underflow without one); None otherwise."""
    import torch

    if amp_dtype == torch.float16 and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def forward_with_loss(network, loss_function, data, target, amp_dtype):
    """(outputs, loss): the forward pass under autocast at `amp_dtype` (None: fp32); the loss in fp32."""
    import torch

    with torch.autocast(data.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        outputs = network(data)
    return outputs, loss_function(outputs, target)


def train_step(network, loss_function, optimizer, scaler, data, target, amp_dtype) -> float:
    """Forward, loss, backward, clipped gradient, optimizer step; returns the loss."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    _, loss = forward_with_loss(network, loss_function, data, target, amp_dtype)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), GRAD_CLIP_NORM)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), GRAD_CLIP_NORM)
        optimizer.step()
    return float(loss.detach())
