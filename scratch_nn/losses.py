"""Losses. Each returns (loss, dlogits): the mean loss as a 0-d array of the backend (read it
with float() only when you log it: on a GPU that read is a device sync) and its gradient."""
from .backends import kernels_for


def softmax_cross_entropy(logits, labels, label_smoothing=0.0, backend=None, scaler=None):
    """Numerically stable softmax cross-entropy, mean over the batch, with optional label
    smoothing as in torch.nn.CrossEntropyLoss(label_smoothing=...). With an amp.GradScaler
    the gradient comes out multiplied by its loss scale (the loss itself does not).

    Without `backend`, the reference kernel for the array's own module (numpy or cupy) runs,
    as in Chainer's get_array_module idiom; the trainer passes its backend explicitly."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError("label_smoothing must be in [0, 1)")
    if logits.ndim != 2 or tuple(labels.shape) != (logits.shape[0],):
        raise ValueError(f"expected logits (N, K) and labels (N,), got {logits.shape} and {labels.shape}")
    be = backend if backend is not None else kernels_for(logits)
    if scaler is not None:
        return be.softmax_cross_entropy(logits, labels, label_smoothing, amp_state=scaler.state)
    return be.softmax_cross_entropy(logits, labels, label_smoothing)
