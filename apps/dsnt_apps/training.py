"""``dsnt train``: a small CNN with a DSNT head learns keypoints of synthetic images on the CPU."""

from __future__ import annotations

import time
from typing import Any, cast

import numpy as np

from dsnt_core import normalized_to_pixel

from .synthetic import POINT_NAMES, keypoint_images

IMAGE_SIZE = 64
BATCH = 32


def mean_pixel_error(pred: np.ndarray, true: np.ndarray, size: int = IMAGE_SIZE) -> float:
    """Mean Euclidean distance in image pixels between normalised coordinates."""
    diff = normalized_to_pixel(np.asarray(pred, np.float64), (size, size)) - normalized_to_pixel(
        np.asarray(true, np.float64), (size, size)
    )
    return float(np.mean(np.sqrt(np.sum(diff**2, axis=-1))))


def _torch_trainer(seed: int) -> tuple[Any, Any]:
    """(train_step(images, points) -> loss, predict(images) -> (coords, heatmaps)) for PyTorch."""
    import torch
    from dsnt_torch import DSNTHead, DSNTLoss

    torch.manual_seed(seed)

    def block(cin: int, cout: int, stride: int) -> list[torch.nn.Module]:
        return [torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1), torch.nn.ReLU()]

    features = torch.nn.Sequential(
        *block(1, 16, 1), *block(16, 32, 2), *block(32, 32, 1), *block(32, 64, 2), *block(64, 64, 1)
    )
    to_logits = torch.nn.Conv2d(64, len(POINT_NAMES), 1)  # the paper's 1x1 convolution
    head = DSNTHead(return_heatmaps=True)
    model = torch.nn.Sequential(features, to_logits, head)
    loss_fn = DSNTLoss(sigma=1.0, regularizer="js")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

    def train_step(images: np.ndarray, points: np.ndarray) -> float:
        optimizer.zero_grad()
        logits = to_logits(features(torch.from_numpy(images)))
        loss = loss_fn(logits, torch.from_numpy(points))
        loss.backward()
        optimizer.step()
        return loss.item()

    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            coords, heatmaps = model(torch.from_numpy(images))
        return coords.numpy(), heatmaps.numpy()

    return train_step, predict


def _jax_trainer(seed: int) -> tuple[Any, Any]:
    """The same network in Flax (``flax.linen``) with the Flax DSNT modules and a small Adam, jitted."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from dsnt_jax.flax_modules import DSNTHead, DSNTLoss

    class Network(nn.Module):
        """Images (batch, 1, H, W) to one logit map per point (batch, points, H / 4, W / 4)."""

        @nn.compact
        def __call__(self, images: jax.Array) -> jax.Array:
            x = jnp.transpose(images, (0, 2, 3, 1))  # channels-last, as flax.linen.Conv
            for features, stride in ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1)):
                x = nn.relu(nn.Conv(features, (3, 3), strides=stride, padding=1)(x))
            logits = nn.Conv(len(POINT_NAMES), (1, 1))(x)  # the paper's 1x1 convolution
            return jnp.transpose(logits, (0, 3, 1, 2))

    network, head, loss_fn = Network(), DSNTHead(return_heatmaps=True), DSNTLoss(sigma=1.0, regularizer="js")
    params = network.init(jax.random.PRNGKey(seed), jnp.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE), jnp.float32))

    def loss_of(params: Any, images: jax.Array, points: jax.Array) -> jax.Array:
        return cast(jax.Array, loss_fn.apply({}, network.apply(params, images), points))

    state = {"params": params, "m": jax.tree.map(jnp.zeros_like, params), "v": jax.tree.map(jnp.zeros_like, params)}
    state["t"] = 0

    @jax.jit
    def update(
        params: Any, m: Any, v: Any, t: int, images: jax.Array, points: jax.Array
    ) -> tuple[Any, Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_of)(params, images, points)
        b1, b2, lr = 0.9, 0.999, 2e-3
        m = jax.tree.map(lambda a, g: b1 * a + (1 - b1) * g, m, grads)
        v = jax.tree.map(lambda a, g: b2 * a + (1 - b2) * g * g, v, grads)
        step = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        params = jax.tree.map(lambda p, a, b: p - step * a / (jnp.sqrt(b) + 1e-8), params, m, v)
        return params, m, v, loss

    def train_step(images: np.ndarray, points: np.ndarray) -> float:
        state["t"] += 1
        state["params"], state["m"], state["v"], loss = update(
            state["params"], state["m"], state["v"], state["t"], jnp.asarray(images), jnp.asarray(points)
        )
        return float(loss)

    @jax.jit
    def forward(params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        coords, heatmaps = cast(tuple[jax.Array, jax.Array], head.apply({}, network.apply(params, images)))
        return coords, heatmaps

    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        coords, heatmaps = forward(state["params"], jnp.asarray(images))
        return np.asarray(coords), np.asarray(heatmaps)

    return train_step, predict


def save_figure(images: np.ndarray, heatmaps: np.ndarray, true: np.ndarray, pred: np.ndarray, path: str) -> None:
    """Images with true (green) and predicted (red) points over the summed heatmaps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(6, len(images))
    fig, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.6))
    size = images.shape[-1]

    def to_pixel(coords: np.ndarray) -> np.ndarray:
        return normalized_to_pixel(np.asarray(coords, np.float64), (size, size))

    for i in range(count):
        top, bottom = axes[0, i], axes[1, i]
        top.imshow(images[i, 0], cmap="gray")
        bottom.imshow(heatmaps[i].sum(0), cmap="magma", extent=(-0.5, size - 0.5, size - 0.5, -0.5))
        for ax in (top, bottom):
            t, p = to_pixel(true[i]), to_pixel(pred[i])
            ax.scatter(t[:, 0], t[:, 1], s=40, facecolors="none", edgecolors="lime", linewidths=1.5)
            ax.scatter(p[:, 0], p[:, 1], s=18, c="red", marker="x")
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("heatmaps")
    fig.suptitle("held-out images: true points (green circles), DSNT predictions (red crosses)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(*, framework: str = "torch", steps: int = 400, seed: int = 0, output: str = "dsnt_train.png") -> float:
    """Train, report the held-out mean pixel error, write the figure; returns the error."""
    from tqdm import tqdm

    train_images, train_points = keypoint_images(BATCH * 64, size=IMAGE_SIZE, seed=seed)
    test_images, test_points = keypoint_images(256, size=IMAGE_SIZE, seed=seed + 10_000)
    train_step, predict = (_torch_trainer if framework == "torch" else _jax_trainer)(seed)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    progress = tqdm(range(steps), desc=f"training ({framework})", unit="step")
    for _ in progress:
        batch = rng.integers(0, len(train_images), size=BATCH)
        loss = train_step(train_images[batch], train_points[batch])
        progress.set_postfix(loss=f"{loss:.4f}")
    elapsed = time.perf_counter() - start
    pred, heatmaps = predict(test_images)
    error = mean_pixel_error(pred, test_points)
    print(f"trained {steps} steps in {elapsed:.1f} s")
    print(f"held-out mean error: {error:.2f} pixels on {IMAGE_SIZE}x{IMAGE_SIZE} images (heatmaps 16x16)")
    save_figure(test_images, heatmaps, test_points, pred, output)
    print(f"figure written to {output}")
    return error
