"""The Inception-v3 network that FID is defined on, loaded from a local copy of the standard FID weights.

FID compares the 2048-d pool features of the Inception-v3 graph of Heusel et al. (TTUR, the TensorFlow
graph of 2015-12-05), which differs from torchvision's ImageNet Inception-v3 in four details: average
pools that leave padding out of the mean (blocks A, C and the first E), a max pool in the last E block's
pool branch, and 1008 output classes.  The weights are the PyTorch port that pytorch-fid distributes,
``pt_inception-2015-12-05-6726825d.pth``; they cannot be downloaded here, so the user passes the file and
:func:`load_fid_inception` checks it before use: its sha256 must begin with ``6726825d``, the digest prefix
its published name carries (torch hub's convention).  The network is written here (pytorch-fid imports
torchvision, whose PyPI build does not load with the CPU torch this project pins); layer names follow
torchvision's, so the state dict loads unchanged.  Needs torch: ``pip install 'vald[fid]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vald.errors import InputError
from vald.manifest import sha256_file

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise InputError("FID needs PyTorch for the Inception network: pip install 'vald[fid]'") from None
    return torch


def build_network() -> Any:
    """The FID Inception-v3 (random weights), ``forward(images [N, 3, H, W] in [0, 1]) -> [N, 2048]``."""
    torch = _torch()
    nn, functional = torch.nn, torch.nn.functional
    module: Any = nn.Module

    class Conv(module):  # type: ignore[misc]
        def __init__(self, cin: int, cout: int, kernel: Any, stride: int = 1, padding: Any = 0) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x: Any) -> Any:
            return functional.relu(self.bn(self.conv(x)))

    def avg3(x: Any) -> Any:  # the FID graph's pools leave the padding out of the mean
        return functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    class BlockA(module):  # type: ignore[misc]
        def __init__(self, cin: int, pool: int) -> None:
            super().__init__()
            self.branch1x1 = Conv(cin, 64, 1)
            self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
            self.branch3x3dbl_1 = Conv(cin, 64, 1)
            self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
            self.branch_pool = Conv(cin, pool, 1)

        def forward(self, x: Any) -> Any:
            double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            five = self.branch5x5_2(self.branch5x5_1(x))
            return torch.cat([self.branch1x1(x), five, double, self.branch_pool(avg3(x))], 1)

    class BlockB(module):  # type: ignore[misc]
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.branch3x3 = Conv(cin, 384, 3, stride=2)
            self.branch3x3dbl_1 = Conv(cin, 64, 1)
            self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

        def forward(self, x: Any) -> Any:
            double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch3x3(x), double, functional.max_pool2d(x, 3, stride=2)], 1)

    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))

    class BlockC(module):  # type: ignore[misc]
        def __init__(self, cin: int, c7: int) -> None:
            super().__init__()
            self.branch1x1 = Conv(cin, 192, 1)
            self.branch7x7_1, self.branch7x7_2 = Conv(cin, c7, 1), Conv(c7, c7, row[0], padding=row[1])
            self.branch7x7_3 = Conv(c7, 192, col[0], padding=col[1])
            self.branch7x7dbl_1 = Conv(cin, c7, 1)
            self.branch7x7dbl_2 = Conv(c7, c7, col[0], padding=col[1])
            self.branch7x7dbl_3 = Conv(c7, c7, row[0], padding=row[1])
            self.branch7x7dbl_4 = Conv(c7, c7, col[0], padding=col[1])
            self.branch7x7dbl_5 = Conv(c7, 192, row[0], padding=row[1])
            self.branch_pool = Conv(cin, 192, 1)

        def forward(self, x: Any) -> Any:
            seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            double = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                double = layer(double)
            return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(avg3(x))], 1)

    class BlockD(module):  # type: ignore[misc]
        def __init__(self, cin: int) -> None:
            super().__init__()
            self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
            self.branch7x7x3_1 = Conv(cin, 192, 1)
            self.branch7x7x3_2 = Conv(192, 192, row[0], padding=row[1])
            self.branch7x7x3_3 = Conv(192, 192, col[0], padding=col[1])
            self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

        def forward(self, x: Any) -> Any:
            three = self.branch3x3_2(self.branch3x3_1(x))
            seven = self.branch7x7x3_1(x)
            for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
                seven = layer(seven)
            return torch.cat([three, seven, functional.max_pool2d(x, 3, stride=2)], 1)

    class BlockE(module):  # type: ignore[misc]
        def __init__(self, cin: int, max_pool: bool) -> None:
            super().__init__()
            self.max_pool = max_pool  # the last block of the FID graph pools by maximum
            self.branch1x1 = Conv(cin, 320, 1)
            self.branch3x3_1 = Conv(cin, 384, 1)
            self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
            self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
            self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
            self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
            self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
            self.branch_pool = Conv(cin, 192, 1)

        def forward(self, x: Any) -> Any:
            t = self.branch3x3_1(x)
            three = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            double = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            pooled = functional.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg3(x)
            return torch.cat([self.branch1x1(x), three, double, self.branch_pool(pooled)], 1)

    class FidInception(module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = Conv(3, 32, 3, stride=2), Conv(32, 32, 3)
            self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
            self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = Conv(64, 80, 1), Conv(80, 192, 3)
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
            self.Mixed_6a = BlockB(288)
            self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
            self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
            self.Mixed_7a = BlockD(768)
            self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
            self.fc = nn.Linear(2048, 1008)  # part of the weights file; FID uses the features before it

        def forward(self, images01: Any) -> Any:
            x = functional.interpolate(images01, size=(299, 299), mode="bilinear", align_corners=False)
            x = 2 * x - 1
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(functional.max_pool2d(x, 3, stride=2)))
            x = functional.max_pool2d(x, 3, stride=2)
            for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
                x = getattr(self, f"Mixed_{name}")(x)
            return functional.adaptive_avg_pool2d(x, 1).flatten(1)

    return FidInception().eval().requires_grad_(False)


class InceptionFeatures:
    """Pool features of grey images with the FID network (3 channels = the grey image repeated)."""

    def __init__(self, network: Any, batch: int = 16) -> None:
        self._net, self._batch = network, batch

    def __call__(self, images01: list[NDArray[np.float32]]) -> NDArray[np.float64]:
        """``[N, 2048]`` features of ``N`` images ``[H, W]`` in [0, 1] (any size; resized to 299²)."""
        torch = _torch()
        out = []
        with torch.no_grad():
            for k in range(0, len(images01), self._batch):
                group = [
                    torch.from_numpy(np.ascontiguousarray(im, dtype=np.float32)) for im in images01[k : k + self._batch]
                ]
                x = torch.stack(group)[:, None].expand(-1, 3, -1, -1)
                out.append(self._net(x).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, 2048))


def load_fid_inception(weights: Path, *, sha256_prefix: str = FID_WEIGHTS_SHA256_PREFIX) -> InceptionFeatures:
    """The FID network with the weights in ``weights``; InputError unless the file is the standard one."""
    torch = _torch()
    if not weights.is_file():
        raise InputError(f"Inception weights file {weights} does not exist (expected {FID_WEIGHTS_NAME})")
    digest = sha256_file(weights)
    if not digest.startswith(sha256_prefix):
        raise InputError(
            f"{weights.name} is not the standard FID Inception weights file {FID_WEIGHTS_NAME}: its sha256 "
            f"begins {digest[:8]}, expected {sha256_prefix}"
        )
    network = build_network()
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's own errors: a damaged or foreign file
        raise InputError(f"{weights.name} cannot be read as a PyTorch state dict ({type(exc).__name__})") from None
    wanted = {k for k in network.state_dict() if not k.endswith("num_batches_tracked")}
    missing = sorted(wanted - set(state))
    if missing:
        raise InputError(f"{weights.name} lacks {len(missing)} Inception tensors (first: {missing[0]})")
    network.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    return InceptionFeatures(network)
