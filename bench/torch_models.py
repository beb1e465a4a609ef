"""The benchmark's PyTorch baseline: ``inception_small`` and ``googlenet`` written in torch.nn
with this project's structure (engine/models: the same layers, channel counts, ceil-mode pools,
LRN, dropout, auxiliary heads with loss weight 0.3), and a timed training loop (SGD with
momentum and weight decay, as ours). ``bench/step.py --torch`` checks that both networks have
the same number of parameters before it times them. PyTorch uses cuDNN; we do not.
"""
import math
import time

import torch
from torch import nn


def conv_relu(c_in, c_out, k, stride=1, pad=0):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, pad), nn.ReLU(inplace=True))


def conv_bn_relu(c_in, c_out, k, stride=1, pad=0):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, pad, bias=False),
                         nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1), nn.ReLU(inplace=True))


class Concat(nn.Module):
    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], dim=1)


def inception(c_in, c1, c3r, c3, c5r, c5, pool_proj):
    return Concat(conv_relu(c_in, c1, 1),
                  nn.Sequential(conv_relu(c_in, c3r, 1), conv_relu(c3r, c3, 3, pad=1)),
                  nn.Sequential(conv_relu(c_in, c5r, 1), conv_relu(c5r, c5, 5, pad=2)),
                  nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                conv_relu(c_in, pool_proj, 1)))


def pool():
    return nn.MaxPool2d(3, 2, ceil_mode=True)


def size_at_4a(image_size):
    n = (image_size + 2 * 3 - 7) // 2 + 1
    for _ in range(3):
        n = math.ceil((n - 3) / 2) + 1
    return n


def aux_head(c_in, num_classes, image_size):
    pooled = math.ceil((size_at_4a(image_size) - 5) / 3) + 1
    return nn.Sequential(nn.AvgPool2d(5, 3, ceil_mode=True), conv_relu(c_in, 128, 1),
                         nn.Flatten(), nn.Linear(128 * pooled * pooled, 1024),
                         nn.ReLU(inplace=True), nn.Dropout(0.7), nn.Linear(1024, num_classes))


class GoogLeNet(nn.Module):
    def __init__(self, num_classes=1000, image_size=224, in_channels=3):
        super().__init__()
        lrn = lambda: nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)  # noqa: E731  (alpha / size too)
        self.to_4a = nn.Sequential(
            conv_relu(in_channels, 64, 7, 2, 3), pool(), lrn(), conv_relu(64, 64, 1),
            conv_relu(64, 192, 3, pad=1), lrn(), pool(),
            inception(192, 64, 96, 128, 16, 32, 32), inception(256, 128, 128, 192, 32, 96, 64),
            pool(), inception(480, 192, 96, 208, 16, 48, 64))
        self.to_4d = nn.Sequential(
            inception(512, 160, 112, 224, 24, 64, 64), inception(512, 128, 128, 256, 24, 64, 64),
            inception(512, 112, 144, 288, 32, 64, 64))
        self.to_logits = nn.Sequential(
            inception(528, 256, 160, 320, 32, 128, 128), pool(),
            inception(832, 256, 160, 320, 32, 128, 128),
            inception(832, 384, 192, 384, 48, 128, 128),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.4), nn.Linear(1024, num_classes))
        self.aux = nn.ModuleList([aux_head(512, num_classes, image_size),
                                  aux_head(528, num_classes, image_size)])

    def forward(self, x):
        a = self.to_4a(x)
        d = self.to_4d(a)
        return self.to_logits(d), [self.aux[0](a), self.aux[1](d)]


class InceptionSmall(nn.Module):
    PLAN = [("inc", 32, 32), ("inc", 32, 48), ("down", 80), ("inc", 112, 48), ("inc", 96, 64),
            ("inc", 80, 80), ("inc", 48, 96), ("down", 96), ("inc", 176, 160),
            ("inc", 176, 160)]

    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        ch, layers = 96, [conv_bn_relu(in_channels, 96, 3, pad=1)]
        for kind, *widths in self.PLAN:
            if kind == "inc":
                c1, c3 = widths
                layers.append(Concat(conv_bn_relu(ch, c1, 1), conv_bn_relu(ch, c3, 3, pad=1)))
                ch = c1 + c3
            else:
                layers.append(Concat(conv_bn_relu(ch, widths[0], 3, 2, 1),
                                     nn.MaxPool2d(3, 2, 1, ceil_mode=False)))
                ch += widths[0]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x), []


def build(name, num_classes, image_size):
    if name == "googlenet":
        return GoogLeNet(num_classes, image_size)
    if name == "inception_small":
        return InceptionSmall(num_classes)
    raise ValueError(f"no PyTorch baseline for model {name!r}")


def num_params(model):
    return sum(p.numel() for p in model.parameters())


def images_per_second(name, batch, image_size, num_classes, steps, tf32, device="cuda"):
    """PyTorch eager training throughput on ``device`` (float32, or TF32 for matrix products
    and convolutions on a GPU): warm-up, then ``steps`` timed steps; returns (img/s,
    parameters)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model = build(name, num_classes, image_size).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=False)
        logits, aux = model(x)
        loss = loss_fn(logits, labels) + sum(0.3 * loss_fn(a, labels) for a in aux)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return batch * steps / (time.perf_counter() - start), num_params(model)
