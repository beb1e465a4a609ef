"""The PyTorch twins of this project's models (core/models: the same layers, channel counts,
ceil-mode pools, LRN, groups, shortcuts, dropout, auxiliary heads with loss weight 0.3), their
parameters registered in the order of ours, so that weights copy across one to one
(``tests/core/test_torch_twins.py`` compares forward and backward in float64), and a timed
training loop (SGD with momentum and weight decay, as ours) for ``bench/step.py --torch``.
PyTorch uses cuDNN on a GPU and oneDNN on the CPU; we use neither.
"""
import math
import statistics
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
    def __init__(self, num_classes=1000, image_size=224, in_channels=3, aux_heads=True,
                 dropout=0.4, aux_weight=0.3):
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
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(1024, num_classes))
        self.aux = nn.ModuleList([aux_head(512, num_classes, image_size),
                                  aux_head(528, num_classes, image_size)] if aux_heads else [])
        self.aux_weight = aux_weight

    def forward(self, x):
        a = self.to_4a(x)
        d = self.to_4d(a)
        return self.to_logits(d), [head(t) for head, t in zip(self.aux, (a, d))]


class InceptionSmall(nn.Module):
    PLAN = [("inc", 32, 32), ("inc", 32, 48), ("down", 80), ("inc", 112, 48), ("inc", 96, 64),
            ("inc", 80, 80), ("inc", 48, 96), ("down", 96), ("inc", 176, 160),
            ("inc", 176, 160)]

    def __init__(self, num_classes=10, in_channels=3, width=1.0):
        super().__init__()
        ch = scaled(96, width)
        layers = [conv_bn_relu(in_channels, ch, 3, pad=1)]
        for kind, *widths in self.PLAN:
            if kind == "inc":
                c1, c3 = (scaled(c, width) for c in widths)
                layers.append(Concat(conv_bn_relu(ch, c1, 1), conv_bn_relu(ch, c3, 3, pad=1)))
                ch = c1 + c3
            else:
                c3 = scaled(widths[0], width)
                layers.append(Concat(conv_bn_relu(ch, c3, 3, 2, 1),
                                     nn.MaxPool2d(3, 2, 1, ceil_mode=False)))
                ch += c3
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x), []


def scaled(channels, width, multiple=1):
    """As the models scale their widths (core/models)."""
    if multiple == 1:
        return max(1, int(round(channels * width)))
    return max(multiple, int(round(channels * width / multiple)) * multiple)


class AlexNet(nn.Module):
    def __init__(self, num_classes=1000, image_size=227, in_channels=3, width=1.0, dropout=0.5):
        super().__init__()
        c1, c2, c3, c4, c5, fc = (scaled(c, width, 2) for c in (96, 256, 384, 384, 256, 4096))
        lrn = lambda: nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)  # noqa: E731
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 11, 4), relu(), pool(), lrn(),
            nn.Conv2d(c1, c2, 5, padding=2, groups=2), relu(), pool(), lrn(),
            nn.Conv2d(c2, c3, 3, padding=1), relu(),
            nn.Conv2d(c3, c4, 3, padding=1, groups=2), relu(),
            nn.Conv2d(c4, c5, 3, padding=1, groups=2), relu(), pool())
        with torch.no_grad():
            side = self.features(torch.zeros(1, in_channels, image_size, image_size)).shape[-1]
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c5 * side * side, fc), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(fc, fc), nn.ReLU(), nn.Dropout(dropout), nn.Linear(fc, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x)), []


class VGG16(nn.Module):
    def __init__(self, num_classes=1000, image_size=224, in_channels=3, width=1.0, dropout=0.5):
        super().__init__()
        layers, ch = [], in_channels
        for channels, convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
            for _ in range(convs):
                layers += [nn.Conv2d(ch, scaled(channels, width), 3, padding=1),
                           nn.ReLU(inplace=True)]
                ch = scaled(channels, width)
            layers.append(nn.MaxPool2d(2, 2))
        fc, side = scaled(4096, width), image_size // 32
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(ch * side * side, fc), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(fc, fc), nn.ReLU(), nn.Dropout(dropout), nn.Linear(fc, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x)), []


def conv_bn(c_in, c_out, k, stride=1, pad=0, relu=True):
    layers = [nn.Conv2d(c_in, c_out, k, stride, pad, bias=False),
              nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Residual(nn.Module):
    """y = relu(body(x) + shortcut(x)), as torchvision's blocks end."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        return torch.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


def bottleneck(c_in, w, stride):
    out = 4 * w
    shortcut = conv_bn(c_in, out, 1, stride, relu=False) if stride != 1 or c_in != out else None
    return Residual(nn.Sequential(conv_bn(c_in, w, 1), conv_bn(w, w, 3, stride, 1),
                                  conv_bn(w, out, 1, relu=False)), shortcut), out


class ResNet50(nn.Module):
    def __init__(self, num_classes=1000, in_channels=3, width=1.0):
        super().__init__()
        ch = scaled(64, width)
        blocks = [conv_bn(in_channels, ch, 7, 2, 3), nn.MaxPool2d(3, 2, 1)]
        for base, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(count):
                block, ch = bottleneck(ch, scaled(base, width), stride if i == 0 else 1)
                blocks.append(block)
        self.net = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(ch, num_classes))

    def forward(self, x):
        return self.net(x), []


class PadShortcut(nn.Module):
    """He et al.'s option A: subsample, zero-pad the channels on both sides."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.stride, self.lo, self.hi = stride, (c_out - c_in) // 2, c_out - c_in - (c_out -
                                                                                    c_in) // 2

    def forward(self, x):
        return nn.functional.pad(x[:, :, ::self.stride, ::self.stride],
                                 (0, 0, 0, 0, self.lo, self.hi))


class CifarResNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, depth=20, width=1.0):
        super().__init__()
        n, widths = (depth - 2) // 6, [max(2, 2 * int(round(c * width / 2))) for c in (16, 32,
                                                                                        64)]
        layers, ch = [conv_bn(in_channels, widths[0], 3, 1, 1)], widths[0]
        for stage, out in enumerate(widths):
            for i in range(n):
                stride = 2 if stage and not i else 1
                shortcut = PadShortcut(ch, out, stride) if stride != 1 or ch != out else None
                layers.append(Residual(nn.Sequential(conv_bn(ch, out, 3, stride, 1),
                                                     conv_bn(out, out, 3, 1, 1, relu=False)),
                                       shortcut))
                ch = out
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(ch, num_classes))

    def forward(self, x):
        return self.net(x), []


def build(name, num_classes, image_size, in_channels=3, **options):
    """The twin of model ``name`` with the options ours takes (``width``, ``dropout``, ...)."""
    if name == "googlenet":
        return GoogLeNet(num_classes, image_size, in_channels, **options)
    if name == "inception_small":
        return InceptionSmall(num_classes, in_channels, **options)
    if name == "alexnet":
        return AlexNet(num_classes, image_size, in_channels, **options)
    if name == "vgg16":
        return VGG16(num_classes, image_size, in_channels, **options)
    if name == "resnet50":
        return ResNet50(num_classes, in_channels, **options)
    if name in ("resnet20", "resnet56", "cifar_resnet"):
        depth = options.pop("depth", int(name[6:]) if name != "cifar_resnet" else 20)
        return CifarResNet(num_classes, in_channels, depth, **options)
    raise ValueError(f"no PyTorch twin for model {name!r}")


def num_params(model):
    return sum(p.numel() for p in model.parameters())


class Twin:
    """The twin of model ``name`` training on ``device`` ('cpu' or 'cuda'; on a GPU float32,
    or TF32 for matrix products and convolutions with ``tf32``, cuDNN picking its algorithms):
    the same batch of random images, SGD with momentum, the loss of ours (aux heads at 0.3)."""

    def __init__(self, name, batch, image_size, num_classes, options, device="cpu", tf32=False,
                 lr=1e-3):
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cudnn.benchmark = True
        self.device = device
        options = {k: v for k, v in options.items() if k != "image_size"}
        self.model = build(name, num_classes, image_size, 3, **options).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9,
                                         weight_decay=5e-4)
        self.x = torch.randn(batch, 3, image_size, image_size, device=device)
        self.labels = torch.randint(0, num_classes, (batch,), device=device)
        self.loss_fn = nn.CrossEntropyLoss()
        self.params = num_params(self.model)

    def step(self):
        self.optimizer.zero_grad(set_to_none=False)
        logits, aux = self.model(self.x)
        loss = self.loss_fn(logits, self.labels) + \
            sum(0.3 * self.loss_fn(a, self.labels) for a in aux)
        loss.backward()
        self.optimizer.step()

    def sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def median_step(self, steps):
        """The median of ``steps`` timed training steps, in seconds (each waits for the GPU)."""
        seconds = []
        for _ in range(steps):
            self.sync()
            start = time.perf_counter()
            self.step()
            self.sync()
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    def peak_memory(self):
        """Peak GPU memory PyTorch's allocator reserved, or this process's peak RSS, in GB."""
        if self.device == "cuda":
            return torch.cuda.max_memory_reserved() / 1e9
        from core.memory import peak_rss
        return peak_rss() / 1e9


def serve(name, batch, image_size, num_classes, threads, options):
    """``python bench/torch_models.py --serve MODEL BATCH SIZE CLASSES THREADS OPTIONS``, for
    ``bench/step.py --torch`` on the CPU: builds the twin, takes two warm-up steps, prints
    ``ready <parameters>``, then for each line N on stdin times N training steps and prints the
    median step in seconds; N = 0 prints the peak RSS in GB and ends."""
    import sys
    torch.set_num_threads(threads)
    twin = Twin(name, batch, image_size, num_classes, options)
    for _ in range(2):
        twin.step()
    print("ready", twin.params, flush=True)
    for line in sys.stdin:
        steps = int(line)
        if steps == 0:
            print(twin.peak_memory(), flush=True)
            return
        print(twin.median_step(steps), flush=True)


if __name__ == "__main__":
    import ast
    import os
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if sys.argv[1:2] != ["--serve"] or len(sys.argv) != 8:
        raise SystemExit("usage: torch_models.py --serve MODEL BATCH SIZE CLASSES THREADS "
                         "OPTIONS (bench/step.py --torch starts it)")
    _, _, model_name, *numbers, options_text = sys.argv
    serve(model_name, *map(int, numbers), ast.literal_eval(options_text))
